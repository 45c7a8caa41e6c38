//! The UI's static files, embedded in the binary. The vendored charting library (uPlot,
//! MIT, from the npm registry: `scripts/vendor-ui.sh` fetches it and checks npm's integrity
//! hash) is pinned here by SHA-256, checked by a test, so a changed file cannot slip in.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// An embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset { name: "app.css", content_type: "text/css; charset=utf-8", bytes: include_bytes!("assets/app.css") },
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", bytes: include_bytes!("assets/app.js") },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/vendor/uPlot.iife.min.js"),
    },
    Asset { name: "uPlot.min.css", content_type: "text/css; charset=utf-8", bytes: include_bytes!("assets/vendor/uPlot.min.css") },
];

/// The SHA-256 (hex) of each vendored file, as fetched from uplot@1.6.32.
#[cfg(test)]
const PINNED: &[(&str, &str)] = &[
    ("uPlot.iife.min.js", "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f"),
    ("uPlot.min.css", "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04"),
];

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET /ui/assets/{name}`: revalidated by ETag (the content's SHA-256).
pub(super) async fn serve(Path(name): Path<String>, request: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let etag = format!("\"{}\"", &sha256_hex(asset.bytes)[..32]);
    let fresh = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == etag);
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.bytes.into_response() };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendored_files_match_their_pins() {
        for (name, pinned) in PINNED {
            let asset = ASSETS.iter().find(|a| a.name == *name);
            assert_eq!(asset.map(|a| sha256_hex(a.bytes)).as_deref(), Some(*pinned), "{name} changed: re-run scripts/vendor-ui.sh and update the pin");
        }
    }
}
