//! Replies that carry a released key or a token: serialized straight into a buffer that is
//! zeroized when the reply is dropped, never through a `serde_json::Value` or a `String` that
//! would leave copies of the secret in freed memory.

use zeroize::Zeroizing;

/// Counts the bytes a serialization writes, so the real buffer is allocated once at its final
/// size (a growing `Vec` would leave unzeroized copies behind at each reallocation).
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `value` as JSON in a zeroizing buffer.
pub fn to_vec<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value)?;
    let mut out = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *out, value)?;
    Ok(out)
}

/// Bytes whose storage is zeroized when the last reference (e.g. the response body, once sent)
/// is dropped.
pub fn bytes(secret: Zeroizing<Vec<u8>>) -> axum::body::Bytes {
    axum::body::Bytes::from_owner(secret)
}

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
