//! A small Azure Blob endpoint for the encrypted filesystems: page blobs in memory under
//! `/devstoreaccount1/<container>/<blob>` (Azurite's path style), with the calls aasp makes:
//! `HEAD`, ranged `GET` (`x-ms-range`), Put Blob (`x-ms-blob-type: PageBlob`) and Put Page
//! (`?comp=page`, `x-ms-page-write: update`). Every call must carry `x-ms-version`.
//!
//! Access: the container `public` is readable anonymously (as a public container); everything
//! else needs a bearer token this emulator issued for `https://storage.azure.com` (IMDS or
//! Entra), checked as Azure Storage checks it: issued, unexpired, that audience. Errors have
//! Azure's shape: an `x-ms-error-code` header and an XML `<Error>` body.

use super::handlers::inject_faults;
use super::State;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::sync::Arc;

/// The account name in paths, Azurite's.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Container readable without a token.
pub const PUBLIC_CONTAINER: &str = "public";
/// Blob bytes held at most (all blobs): `aasp dev` holds its demo image, tests small images.
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;
/// Put Page writes at most 4 MiB, as Azure's.
const MAX_PUT_PAGE: usize = 4 << 20;
const PAGE: u64 = 512;

/// The page blobs, by `<container>/<blob>`.
#[derive(Default)]
pub struct Blobs {
    blobs: std::sync::Mutex<HashMap<String, Vec<u8>>>,
}

impl Blobs {
    /// Stores `data` as a page blob (seeding `aasp dev`'s demo image, tests).
    pub fn put(&self, container: &str, name: &str, data: Vec<u8>) -> Result<(), String> {
        if data.len() as u64 % PAGE != 0 {
            return Err(format!("a page blob's size must be a multiple of {PAGE}"));
        }
        let mut blobs = self.lock();
        let key = format!("{container}/{name}");
        let held: u64 = blobs
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(_, v)| v.len() as u64)
            .sum();
        if held + data.len() as u64 > MAX_TOTAL_BYTES {
            return Err(format!(
                "the emulator holds at most {MAX_TOTAL_BYTES} blob bytes"
            ));
        }
        blobs.insert(key, data);
        Ok(())
    }

    /// A copy of a blob's bytes, if it exists.
    pub fn get(&self, container: &str, name: &str) -> Option<Vec<u8>> {
        self.lock().get(&format!("{container}/{name}")).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

type Shared = Arc<State>;

pub(super) fn router(state: Shared) -> Router {
    Router::new()
        .route(
            &format!("/{ACCOUNT}/{{container}}/{{*blob}}"),
            get(read).head(head).put(put),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PUT_PAGE))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            inject_faults,
        ))
        .with_state(state)
}

/// Azure Storage's error shape.
struct StorageError(StatusCode, &'static str, String);

impl IntoResponse for StorageError {
    fn into_response(self) -> Response {
        let StorageError(status, code, message) = self;
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code>\
             <Message>{message}</Message></Error>"
        );
        (
            status,
            [
                ("x-ms-error-code", code),
                ("content-type", "application/xml"),
            ],
            body,
        )
            .into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: &str) -> StorageError {
    StorageError(status, code, message.to_owned())
}

/// What a request may do: read, or also write.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Access {
    Read,
    Write,
}

fn authorize(
    state: &State,
    headers: &HeaderMap,
    container: &str,
    access: Access,
) -> Result<(), StorageError> {
    if headers.get("x-ms-version").is_none() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified: x-ms-version",
        ));
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer else {
        if container == PUBLIC_CONTAINER && access == Access::Read {
            return Ok(());
        }
        return Err(error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The specified resource does not exist.",
        ));
    };
    let expiry = state
        .access_tokens
        .lock()
        .ok()
        .and_then(|t| t.get(token).copied());
    let fail = |m: &str| error(StatusCode::UNAUTHORIZED, "InvalidAuthenticationInfo", m);
    match expiry {
        Some(exp) if exp > super::handlers::now() as u64 => {}
        Some(_) => return Err(fail("Lifetime validation failed. The token is expired.")),
        None => return Err(fail("Server failed to authenticate the request.")),
    }
    if !is_storage_token(token) {
        return Err(fail("Invalid token audience."));
    }
    Ok(())
}

/// A token whose `aud` is Azure Storage's (the tokens issued for other resources are opaque).
fn is_storage_token(token: &str) -> bool {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok());
    claims
        .as_ref()
        .and_then(|c| c.get("aud"))
        .and_then(|a| a.as_str())
        .is_some_and(|aud| aud.trim_end_matches('/') == super::handlers::STORAGE_AUDIENCE)
}

fn not_found() -> StorageError {
    error(
        StatusCode::NOT_FOUND,
        "BlobNotFound",
        "The specified blob does not exist.",
    )
}

async fn head(
    AxState(state): AxState<Shared>,
    Path((container, blob)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, StorageError> {
    authorize(&state, &headers, &container, Access::Read)?;
    let size = state
        .blobs
        .lock()
        .get(&format!("{container}/{blob}"))
        .map(Vec::len)
        .ok_or_else(not_found)?;
    Ok((
        [
            ("content-length", size.to_string()),
            ("x-ms-blob-type", "PageBlob".to_owned()),
        ],
        (),
    )
        .into_response())
}

/// `bytes=a-b` (inclusive).
fn parse_range(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.strip_prefix("bytes=")?.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

async fn read(
    AxState(state): AxState<Shared>,
    Path((container, blob)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, StorageError> {
    authorize(&state, &headers, &container, Access::Read)?;
    let blobs = state.blobs.lock();
    let data = blobs
        .get(&format!("{container}/{blob}"))
        .ok_or_else(not_found)?;
    let range = headers
        .get("x-ms-range")
        .or_else(|| headers.get("range"))
        .and_then(|v| v.to_str().ok());
    let Some(range) = range else {
        return Ok((
            StatusCode::OK,
            [("x-ms-blob-type", "PageBlob")],
            data.clone(),
        )
            .into_response());
    };
    let invalid = || {
        error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            "The range specified is invalid for the current size of the resource.",
        )
    };
    let (first, last) = parse_range(range).ok_or_else(invalid)?;
    let size = data.len() as u64;
    if first >= size {
        return Err(invalid());
    }
    let last = last.min(size - 1);
    let body = data
        .get(first as usize..=last as usize)
        .ok_or_else(invalid)?
        .to_vec();
    Ok((
        StatusCode::PARTIAL_CONTENT,
        [
            ("content-range", format!("bytes {first}-{last}/{size}")),
            ("x-ms-blob-type", "PageBlob".to_owned()),
        ],
        body,
    )
        .into_response())
}

async fn put(
    AxState(state): AxState<Shared>,
    Path((container, blob)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, StorageError> {
    authorize(&state, &headers, &container, Access::Write)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key = format!("{container}/{blob}");
    match query.get("comp").map(String::as_str) {
        Some("page") => {
            if header("x-ms-page-write") != Some("update") {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "InvalidHeaderValue",
                    "x-ms-page-write must be update (clear is not emulated)",
                ));
            }
            let (first, last) = header("x-ms-range")
                .or_else(|| header("range"))
                .and_then(parse_range)
                .ok_or_else(|| {
                    error(
                        StatusCode::BAD_REQUEST,
                        "InvalidHeaderValue",
                        "x-ms-range is required",
                    )
                })?;
            if first % PAGE != 0 || (last + 1) % PAGE != 0 || body.len() as u64 != last - first + 1
            {
                return Err(error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidPageRange",
                    "The page range specified is invalid.",
                ));
            }
            let mut blobs = state.blobs.lock();
            let data = blobs.get_mut(&key).ok_or_else(not_found)?;
            let target = data
                .get_mut(first as usize..=last as usize)
                .ok_or_else(|| {
                    error(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "InvalidPageRange",
                        "The page range specified is invalid.",
                    )
                })?;
            target.copy_from_slice(&body);
            Ok(StatusCode::CREATED.into_response())
        }
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "UnsupportedQueryParameter",
            "only comp=page is emulated",
        )),
        None => {
            if header("x-ms-blob-type") != Some("PageBlob") {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "UnsupportedHeader",
                    "only page blobs are emulated (x-ms-blob-type: PageBlob)",
                ));
            }
            let size: u64 = header("x-ms-blob-content-length")
                .and_then(|v| v.parse().ok())
                .filter(|s| s % PAGE == 0 && *s <= MAX_TOTAL_BYTES)
                .ok_or_else(|| {
                    error(
                        StatusCode::BAD_REQUEST,
                        "InvalidHeaderValue",
                        "x-ms-blob-content-length must be a multiple of 512 (and fit the emulator)",
                    )
                })?;
            if header("if-none-match") == Some("*") && state.blobs.get(&container, &blob).is_some()
            {
                return Err(error(
                    StatusCode::CONFLICT,
                    "BlobAlreadyExists",
                    "The specified blob already exists.",
                ));
            }
            state
                .blobs
                .put(&container, &blob, vec![0; size as usize])
                .map_err(|m| error(StatusCode::INSUFFICIENT_STORAGE, "InsufficientStorage", &m))?;
            Ok(StatusCode::CREATED.into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_inclusive() {
        assert_eq!(parse_range("bytes=0-511"), Some((0, 511)));
        assert_eq!(parse_range("bytes=512-"), None);
        assert_eq!(parse_range("bytes=9-3"), None);
        assert_eq!(parse_range("items=0-1"), None);
    }

    #[test]
    fn the_store_is_bounded() {
        let blobs = Blobs::default();
        blobs.put("c", "a", vec![0; 1024]).unwrap();
        assert!(blobs.put("c", "b", vec![0; 100]).is_err());
        assert!(blobs
            .put("c", "big", vec![0; MAX_TOTAL_BYTES as usize])
            .is_err());
        // Replacing a blob counts only its new size.
        blobs.put("c", "a", vec![1; 2048]).unwrap();
        assert_eq!(blobs.get("c", "a").unwrap().len(), 2048);
    }
}
