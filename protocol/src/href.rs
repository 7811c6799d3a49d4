//! The `href` of the `app` role: where requests go.

use crate::paths::normalize_prefix;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Href {
    pub scheme: String,
    /// `host:port`, the port made explicit from the scheme when absent.
    pub authority: String,
    /// The path, normalised (no trailing slash; empty for the root).
    pub path: String,
    /// The query, without `?`; `None` when absent or empty.
    pub query: Option<String>,
}

impl Href {
    pub fn parse(href: &str) -> Result<Href, String> {
        let uri: http::Uri = href.parse().map_err(|e| format!("not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some(s @ ("http" | "https")) => s.to_string(),
            Some(other) => return Err(format!("scheme must be http or https, not {other:?}")),
            None => return Err("must be an absolute http:// or https:// URL".into()),
        };
        let authority = uri.authority().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not contain user information".into());
        }
        let host = authority.host();
        if host.is_empty() {
            return Err("has no host".into());
        }
        let port = match authority.port_u16() {
            Some(port) => port,
            None if scheme == "https" => 443,
            None => 80,
        };
        let path = normalize_prefix(uri.path()).map_err(|e| format!("path {e}"))?;
        if href.contains('#') {
            return Err("must not contain a fragment".into());
        }
        Ok(Href { scheme, authority: format!("{host}:{port}"), path, query: uri.query().filter(|q| !q.is_empty()).map(str::to_string) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_parts() {
        let h = Href::parse("http://backend:8080/myapp?some=querystring").unwrap();
        assert_eq!(h.scheme, "http");
        assert_eq!(h.authority, "backend:8080");
        assert_eq!(h.path, "/myapp");
        assert_eq!(h.query.as_deref(), Some("some=querystring"));
        let h = Href::parse("https://example.com").unwrap();
        assert_eq!(h.authority, "example.com:443");
        assert_eq!(h.path, "");
        assert_eq!(h.query, None);
        assert_eq!(Href::parse("http://[::1]/a/").unwrap().authority, "[::1]:80");
    }

    #[test]
    fn refuses_what_is_not_a_backend() {
        assert!(Href::parse("ftp://x/").is_err());
        assert!(Href::parse("/relative").is_err());
        assert!(Href::parse("http://user:pw@x/").is_err());
        assert!(Href::parse("http://x/a/../b").is_err());
        assert!(Href::parse("not a url").is_err());
    }
}
