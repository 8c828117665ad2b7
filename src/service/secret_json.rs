//! Replies that carry a released key or a token: serialized straight into a buffer that is
//! zeroized when the reply is dropped, never through a `serde_json::Value` or a `String` that
//! would leave copies of the secret in freed memory.

pub use crate::http::zeroizing_bytes as bytes;
pub use crate::http::zeroizing_json as to_vec;

/// A 200 `application/json` response whose body is `value`, zeroized once sent.
pub fn response<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<axum::response::Response, serde_json::Error> {
    let body = to_vec(value)?;
    let mut response = axum::response::Response::new(axum::body::Body::from(bytes(body)));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_is_allocated_once_at_its_final_size() {
        let value = serde_json::json!({ "key": "x".repeat(1000), "n": [1, 2, 3] });
        let out = to_vec(&value).unwrap();
        assert_eq!(out.len(), out.capacity());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
            value
        );
    }
}
