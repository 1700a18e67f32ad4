//! The B2 native API on the wire: response shapes, error bodies and name encoding
//! (providers.md §1.2, §1.3, §1.7, §1.8, §1.11). Pure functions only, so every shape the
//! service (or an older API version) may send is unit-tested here without a server.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use url::Url;

use crate::error::SourceError;
use crate::source::Checksum;

/// One bucket a key may use (`allowed.buckets` in v4, `bucketId`/`bucketName` before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRef {
    pub id: String,
    /// `None` when the restricted bucket was deleted (v1–v3 send `bucketName: null`).
    pub name: Option<String>,
}

/// What the key may do, from the authorization response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// `None`: every bucket of the account (`b2_list_buckets` works).
    pub buckets: Option<Vec<BucketRef>>,
    pub name_prefix: Option<String>,
    pub capabilities: Vec<String>,
}

/// The parts of a `b2_authorize_account` answer the client uses, whatever the API version.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub account_id: String,
    pub token: String,
    pub api_url: Url,
    pub download_url: Url,
    pub allowed: Allowed,
}

fn str_field<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(|x| x.as_str())
}

fn url_field(v: &serde_json::Value, key: &str) -> Result<Url, String> {
    let s = str_field(v, key).ok_or_else(|| format!("authorization response has no {key}"))?;
    let u = Url::parse(s).map_err(|_| format!("authorization response: {key} is not a URL"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(format!("authorization response: {key} is not an http(s) URL"));
    }
    Ok(u)
}

fn capabilities(v: Option<&serde_json::Value>) -> Vec<String> {
    v.and_then(|c| c.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// `bucketId` + `bucketName` of the v1–v3 shapes as a one-bucket restriction.
fn single_bucket(v: &serde_json::Value) -> Option<Vec<BucketRef>> {
    let id = str_field(v, "bucketId")?;
    Some(vec![BucketRef {
        id: id.to_string(),
        name: str_field(v, "bucketName").map(str::to_string),
    }])
}

/// Parses the v4 (`apiInfo.storageApi.allowed`), v3 (`apiInfo.storageApi` flat) and v1/v2
/// (top-level `apiUrl` and `allowed`) shapes of `b2_authorize_account`.
pub fn parse_authorization(v: &serde_json::Value) -> Result<Authorization, String> {
    let token = str_field(v, "authorizationToken")
        .ok_or("authorization response has no authorizationToken")?
        .to_string();
    let account_id = str_field(v, "accountId").unwrap_or_default().to_string();
    let (api, allowed) = if let Some(storage) = v.get("apiInfo").and_then(|a| a.get("storageApi")) {
        let allowed = match storage.get("allowed") {
            // v4: an `allowed` object with a bucket list (null = all buckets).
            Some(a) => Allowed {
                buckets: a.get("buckets").and_then(|b| b.as_array()).map(|list| {
                    list.iter()
                        .filter_map(|b| {
                            Some(BucketRef {
                                id: str_field(b, "id")?.to_string(),
                                name: str_field(b, "name").map(str::to_string),
                            })
                        })
                        .collect()
                }),
                name_prefix: str_field(a, "namePrefix").map(str::to_string),
                capabilities: capabilities(a.get("capabilities")),
            },
            // v3: the restriction sits in storageApi itself.
            None => Allowed {
                buckets: single_bucket(storage),
                name_prefix: str_field(storage, "namePrefix").map(str::to_string),
                capabilities: capabilities(storage.get("capabilities")),
            },
        };
        (storage, allowed)
    } else {
        // v1/v2: flat.
        let a = v.get("allowed").cloned().unwrap_or_default();
        let allowed = Allowed {
            buckets: single_bucket(&a),
            name_prefix: str_field(&a, "namePrefix").map(str::to_string),
            capabilities: capabilities(a.get("capabilities")),
        };
        (v, allowed)
    };
    Ok(Authorization {
        account_id,
        token,
        api_url: url_field(api, "apiUrl")?,
        download_url: url_field(api, "downloadUrl")?,
        allowed,
    })
}

/// `serverSideEncryption` of a file (v2+).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Encryption {
    pub mode: Option<String>,
}

/// A file object of `b2_list_file_names` / `b2_list_file_versions` / `b2_get_file_info`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileVersion {
    pub action: String,
    pub file_id: Option<String>,
    pub file_name: String,
    pub content_length: Option<u64>,
    /// The v1 name of `contentLength`.
    pub size: Option<u64>,
    pub content_sha1: Option<String>,
    pub content_type: Option<String>,
    /// String map on the wire; anything else is kept as its JSON text.
    pub file_info: Option<BTreeMap<String, serde_json::Value>>,
    pub upload_timestamp: Option<u64>,
    pub server_side_encryption: Option<Encryption>,
}

impl FileVersion {
    pub fn size(&self) -> u64 {
        self.known_size().unwrap_or(0)
    }

    /// The size when the answer states one (a file without it must not show as empty).
    pub fn known_size(&self) -> Option<u64> {
        self.content_length.or(self.size)
    }

    /// `fileInfo` as strings.
    pub fn info(&self) -> Vec<(String, String)> {
        self.file_info
            .iter()
            .flatten()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }

    fn info_value(&self, key: &str) -> Option<String> {
        self.info().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `src_last_modified_millis` if present and numeric, else `uploadTimestamp` (as b2sdk).
    pub fn mtime(&self) -> SystemTime {
        let ms = self
            .info_value("src_last_modified_millis")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .or(self.upload_timestamp)
            .unwrap_or(0);
        millis(ms)
    }

    /// The whole-file SHA-1: `contentSha1` unless `none`, else `large_file_sha1`.
    pub fn sha1(&self) -> Option<Checksum> {
        resolve_sha1(
            self.content_sha1.as_deref(),
            self.info_value("large_file_sha1").as_deref(),
        )
    }

    /// `SSE-C`, `SSE-B2`, or `None`.
    pub fn encryption(&self) -> Option<String> {
        self.server_side_encryption.as_ref().and_then(|e| e.mode.clone())
    }
}

pub fn millis(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// b2sdk's order: the content SHA-1 unless it is `none`/absent, else `large_file_sha1`;
/// `unverified:` prefixes are stripped.
pub fn resolve_sha1(content_sha1: Option<&str>, large_file_sha1: Option<&str>) -> Option<Checksum> {
    content_sha1
        .filter(|s| !s.trim().eq_ignore_ascii_case("none"))
        .and_then(Checksum::sha1_hex)
        .or_else(|| large_file_sha1.and_then(Checksum::sha1_hex))
}

/// A page of `b2_list_file_names` / `b2_list_file_versions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilePage {
    pub files: Vec<FileVersion>,
    #[serde(default)]
    pub next_file_name: Option<String>,
    #[serde(default)]
    pub next_file_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    pub bucket_id: String,
    pub bucket_name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BucketList {
    pub buckets: Vec<Bucket>,
}

/// `{"status": 401, "code": "expired_auth_token", "message": "..."}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// The error of a non-success answer: its JSON body, or `None` for an empty body (HEAD)
/// and `non_json_response` with a snippet for anything else (as b2sdk does).
pub async fn read_error(resp: reqwest::Response) -> (StatusCode, Option<ErrorBody>) {
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.bytes()).await;
    let body = match body {
        Ok(Ok(b)) => b,
        _ => return (status, None),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return (status, None);
    }
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) if !e.code.is_empty() => (status, Some(e)),
        _ => {
            let snippet: String = String::from_utf8_lossy(&body[..body.len().min(200)])
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            (
                status,
                Some(ErrorBody {
                    code: "non_json_response".into(),
                    message: snippet,
                }),
            )
        }
    }
}

/// Whether a `401` calls for one re-authorization and a retry (§1.2): an expired or unknown
/// token, or a body-less 401 (HEAD) whose cause cannot be told.
pub fn is_reauth(status: StatusCode, body: Option<&ErrorBody>) -> bool {
    status == StatusCode::UNAUTHORIZED
        && body.is_none_or(|b| b.code == "expired_auth_token" || b.code == "bad_auth_token")
}

/// The errno-level meaning of a B2 error (§1.8). `what` names the call, never a token.
pub fn map_error(what: &str, status: StatusCode, body: Option<&ErrorBody>) -> SourceError {
    let code = body.map(|b| b.code.as_str()).unwrap_or("");
    let reason = match body {
        Some(b) if b.message.is_empty() => b.code.clone(),
        Some(b) => format!("{}: {}", b.code, b.message),
        None => format!("HTTP {} without a body", status.as_u16()),
    };
    let message = format!("{what}: {reason}");
    match (status.as_u16(), code) {
        (403, "download_cap_exceeded" | "transaction_cap_exceeded" | "storage_cap_exceeded") => {
            SourceError::QuotaExceeded(format!(
                "{message} (raise the cap under Caps & Alerts in the B2 web console)"
            ))
        }
        (401 | 403, _) => SourceError::PermissionDenied(message),
        (400, "bad_bucket_id") | (404, _) => SourceError::NotFound(message),
        (400, _) => SourceError::Invalid(message),
        (416, _) => SourceError::Changed(message),
        (s, _) => SourceError::Http { status: s, message },
    }
}

/// Decodes a percent-encoded name or `X-Bz-Info-*` value (§1.11): `+` is a space, `%XX` a
/// byte, everything else literal. Invalid UTF-8 is replaced rather than refused.
pub fn decode_header_value(s: &str) -> String {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

/// A header as a string, or `None`.
pub fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The file metadata a download or HEAD answer carries (§1.5), as a [`FileVersion`].
pub fn version_from_headers(h: &HeaderMap) -> FileVersion {
    let mut info = BTreeMap::new();
    for (k, v) in h {
        if let Some(key) = k.as_str().strip_prefix("x-bz-info-")
            && let Ok(v) = v.to_str()
        {
            info.insert(key.to_string(), serde_json::Value::String(decode_header_value(v)));
        }
    }
    FileVersion {
        action: "upload".into(),
        file_id: header(h, "x-bz-file-id").map(str::to_string),
        file_name: header(h, "x-bz-file-name").map(decode_header_value).unwrap_or_default(),
        content_length: header(h, "content-length").and_then(|v| v.trim().parse().ok()),
        size: None,
        content_sha1: header(h, "x-bz-content-sha1").map(str::to_string),
        content_type: header(h, "content-type").map(str::to_string),
        file_info: Some(info),
        upload_timestamp: header(h, "x-bz-upload-timestamp").and_then(|v| v.trim().parse().ok()),
        server_side_encryption: header(h, "x-bz-server-side-encryption-customer-algorithm")
            .map(|_| Encryption {
                mode: Some("SSE-C".into()),
            })
            .or_else(|| {
                header(h, "x-bz-server-side-encryption").map(|_| Encryption {
                    mode: Some("SSE-B2".into()),
                })
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v4_authorization_shape_with_bucket_list() {
        let v = json!({
            "accountId": "acc", "authorizationToken": "tok",
            "apiInfo": {"groupsApi": {}, "storageApi": {
                "apiUrl": "https://api005.example", "downloadUrl": "https://f005.example",
                "recommendedPartSize": 100, "absoluteMinimumPartSize": 5,
                "allowed": {"buckets": [{"id": "b1", "name": "one"}, {"id": "b2", "name": null}],
                            "capabilities": ["listFiles", "readFiles"], "namePrefix": "p/"}}}
        });
        let a = parse_authorization(&v).unwrap();
        assert_eq!(a.token, "tok");
        assert_eq!(a.api_url.as_str(), "https://api005.example/");
        assert_eq!(a.download_url.host_str(), Some("f005.example"));
        let buckets = a.allowed.buckets.unwrap();
        assert_eq!(buckets.len(), 2);
        assert_eq!(buckets[0].name.as_deref(), Some("one"));
        assert_eq!(buckets[1].name, None);
        assert_eq!(a.allowed.name_prefix.as_deref(), Some("p/"));
        assert_eq!(a.allowed.capabilities, ["listFiles", "readFiles"]);
    }

    #[test]
    fn v4_unrestricted_key_has_no_bucket_list() {
        let v = json!({"accountId": "acc", "authorizationToken": "t", "apiInfo": {"storageApi": {
            "apiUrl": "http://a", "downloadUrl": "http://d",
            "allowed": {"buckets": null, "capabilities": [], "namePrefix": null}}}});
        assert_eq!(parse_authorization(&v).unwrap().allowed.buckets, None);
    }

    #[test]
    fn v3_authorization_shape_is_flat_inside_storage_api() {
        let v = json!({"accountId": "acc", "authorizationToken": "t", "apiInfo": {"storageApi": {
            "apiUrl": "http://a", "downloadUrl": "http://d", "bucketId": "b1", "bucketName": "one",
            "namePrefix": null, "capabilities": ["readFiles"], "infoType": "storageApi"}}});
        let a = parse_authorization(&v).unwrap();
        assert_eq!(
            a.allowed.buckets,
            Some(vec![BucketRef {
                id: "b1".into(),
                name: Some("one".into())
            }])
        );
        assert_eq!(a.allowed.capabilities, ["readFiles"]);
    }

    #[test]
    fn v1_authorization_shape_is_flat() {
        let v = json!({"accountId": "acc", "authorizationToken": "t", "apiUrl": "http://a",
            "downloadUrl": "http://d", "recommendedPartSize": 1,
            "allowed": {"bucketId": null, "bucketName": null, "capabilities": ["listBuckets"], "namePrefix": null}});
        let a = parse_authorization(&v).unwrap();
        assert_eq!(a.allowed.buckets, None);
        assert_eq!(a.api_url.as_str(), "http://a/");
    }

    #[test]
    fn authorization_without_urls_is_refused() {
        let v = json!({"accountId": "acc", "authorizationToken": "t"});
        assert!(parse_authorization(&v).unwrap_err().contains("apiUrl"));
        let v = json!({"authorizationToken": "t", "apiUrl": "ftp://x", "downloadUrl": "http://d"});
        assert!(parse_authorization(&v).is_err());
    }

    #[test]
    fn sha1_resolution_follows_b2sdk() {
        let hex = "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed";
        let want = Checksum::sha1_hex(hex);
        assert_eq!(resolve_sha1(Some(hex), None), want);
        assert_eq!(resolve_sha1(Some("none"), Some(hex)), want);
        assert_eq!(resolve_sha1(Some(&format!("unverified:{hex}")), None), want);
        assert_eq!(resolve_sha1(Some("none"), Some(&format!("unverified:{hex}"))), want);
        assert_eq!(resolve_sha1(Some("none"), None), None);
        assert_eq!(resolve_sha1(None, None), None);
    }

    #[test]
    fn v1_size_and_mtime_fallbacks() {
        let f: FileVersion = serde_json::from_value(json!({
            "action": "upload", "fileId": "id", "fileName": "a", "size": 7,
            "uploadTimestamp": 5000, "fileInfo": {"src_last_modified_millis": "2000"}
        }))
        .unwrap();
        assert_eq!(f.size(), 7);
        assert_eq!(f.mtime(), millis(2000));
        let g: FileVersion = serde_json::from_value(json!({
            "action": "upload", "fileId": "id", "fileName": "a", "contentLength": 9,
            "uploadTimestamp": 5000, "fileInfo": {"src_last_modified_millis": "junk"}
        }))
        .unwrap();
        assert_eq!(g.size(), 9);
        assert_eq!(g.mtime(), millis(5000));
        let folder: FileVersion = serde_json::from_value(json!({
            "action": "folder", "fileId": null, "fileName": "d/", "contentLength": 0,
            "contentSha1": null, "contentType": null, "fileInfo": null, "uploadTimestamp": 0
        }))
        .unwrap();
        assert_eq!(folder.file_id, None);
        assert!(folder.info().is_empty());
    }

    #[test]
    fn names_decode_plus_and_percent() {
        assert_eq!(decode_header_value("a+b%20c%2Bd/%C3%A9"), "a b c+d/é");
        assert_eq!(decode_header_value("!$'()*:;=@-._~"), "!$'()*:;=@-._~");
    }

    #[test]
    fn errors_map_to_the_errno_table() {
        let e = |code: &str| ErrorBody {
            code: code.into(),
            message: "m".into(),
        };
        let m = |s: u16, code: &str| map_error("x", StatusCode::from_u16(s).unwrap(), Some(&e(code)));
        assert!(matches!(m(401, "unauthorized"), SourceError::PermissionDenied(_)));
        assert!(matches!(m(403, "access_denied"), SourceError::PermissionDenied(_)));
        assert!(matches!(m(403, "download_cap_exceeded"), SourceError::QuotaExceeded(_)));
        assert!(matches!(
            m(403, "transaction_cap_exceeded"),
            SourceError::QuotaExceeded(_)
        ));
        assert!(matches!(m(404, "not_found"), SourceError::NotFound(_)));
        assert!(matches!(m(400, "bad_bucket_id"), SourceError::NotFound(_)));
        assert!(matches!(m(400, "bad_request"), SourceError::Invalid(_)));
        assert!(matches!(m(416, "range_not_satisfiable"), SourceError::Changed(_)));
        assert!(matches!(
            m(503, "service_unavailable"),
            SourceError::Http { status: 503, .. }
        ));
        assert!(is_reauth(StatusCode::UNAUTHORIZED, Some(&e("expired_auth_token"))));
        assert!(is_reauth(StatusCode::UNAUTHORIZED, Some(&e("bad_auth_token"))));
        assert!(is_reauth(StatusCode::UNAUTHORIZED, None));
        assert!(!is_reauth(StatusCode::UNAUTHORIZED, Some(&e("unauthorized"))));
        assert!(!is_reauth(StatusCode::FORBIDDEN, None));
    }

    #[test]
    fn download_headers_become_a_file_version() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-bz-file-id", "fid"),
            ("x-bz-file-name", "dir/a+b%C3%A9.txt"),
            ("content-length", "12"),
            ("x-bz-content-sha1", "none"),
            ("x-bz-info-large_file_sha1", "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed"),
            ("x-bz-info-author", "J%C3%BCrgen+X"),
            ("x-bz-upload-timestamp", "1234"),
        ] {
            h.insert(reqwest::header::HeaderName::from_static(k), v.parse().unwrap());
        }
        let f = version_from_headers(&h);
        assert_eq!(f.file_name, "dir/a bé.txt");
        assert_eq!(f.size(), 12);
        assert!(f.sha1().is_some());
        assert!(f.info().contains(&("author".to_string(), "Jürgen X".to_string())));
        assert_eq!(f.mtime(), millis(1234));
    }
}
