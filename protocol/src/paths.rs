//! Path rules: mount points (SCRIPT_NAME), traversal paths and forced prefixes, all
//! matched on whole segments.

/// Splits `:path` into the path and the query (without its `?`).
pub fn split_query(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// The target `{mount}{rest}?{first}&{second}` in one allocation: the path `/` when
/// both parts are empty, the two queries joined with `&` as WSGIProxyApp did, empty
/// ones dropped (and the `?` with them).
pub fn target_joining_queries(mount: &str, rest: &str, first: Option<&str>, second: Option<&str>) -> String {
    let (first, second) = (first.filter(|q| !q.is_empty()), second.filter(|q| !q.is_empty()));
    let mut target = String::with_capacity(mount.len() + rest.len() + 3 + first.map_or(0, str::len) + second.map_or(0, str::len));
    target.push_str(mount);
    target.push_str(rest);
    if target.is_empty() {
        target.push('/');
    }
    let mut separator = '?';
    for query in [first, second].into_iter().flatten() {
        target.push(separator);
        target.push_str(query);
        separator = '&';
    }
    target
}

/// Builds a request target from a path and an optional query.
pub fn with_query(path: &str, query: Option<&str>) -> String {
    // Joined by hand: `format!` costs several times as much for two strings.
    let Some(q) = query else { return path.to_string() };
    let mut target = String::with_capacity(path.len() + 1 + q.len());
    target.push_str(path);
    target.push('?');
    target.push_str(q);
    target
}

/// Removes `prefix` from the front of `path` on a segment boundary.
/// `prefix` is normalised (no trailing slash; empty means the root).
/// Returns the rest, which is empty or starts with `/`.
pub fn strip_segment_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() || rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// Why a path prefix is not acceptable.
pub type PathError = &'static str;

/// Normalises a configured or received path prefix: it must start with `/` (or be
/// empty), carry no query, fragment, back slash, control character, percent-encoding
/// or dot segment, and no empty segment; a trailing `/` is dropped. `/` becomes empty.
pub fn normalize_prefix(value: &str) -> Result<String, PathError> {
    normalized_prefix(value).map(str::to_string)
}

/// [`normalize_prefix`], borrowed from `value` (the normal form is a prefix of it).
pub fn normalized_prefix(value: &str) -> Result<&str, PathError> {
    if value.is_empty() {
        return Ok(value);
    }
    if !value.starts_with('/') {
        return Err("must start with /");
    }
    if value.bytes().any(|b| matches!(b, b'?' | b'#' | b'\\' | b'%' | b',') || !(0x21..0x7f).contains(&b)) {
        return Err("must be a plain path (no query, fragment, back slash, percent-encoding, comma, space or control character)");
    }
    let trimmed = value.trim_end_matches('/');
    // Split as bytes: the value is ASCII by now, and a byte split costs less than a char one.
    if trimmed.as_bytes().split(|b| *b == b'/').skip(1).any(|s| s.is_empty() || is_dot_segment(s)) {
        return Err("must not contain empty or dot segments");
    }
    Ok(trimmed)
}

/// True when `path` holds a segment a backend could resolve upwards or sideways
/// (`.`, `..`, their percent-encoded forms) or a back slash or encoded slash:
/// after a prefix is removed, such a path could escape its mount point.
pub fn has_unsafe_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Each form below holds a dot, a percent sign or a back slash: most paths hold
    // none, and one pass says so.
    if !bytes.iter().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    if bytes.contains(&b'\\') {
        return true;
    }
    // `%2f` or `%5c`, in either case (`| 0x20` lowercases an ASCII letter and maps
    // no other byte to `f` or `c`).
    if bytes.windows(3).any(|w| w[0] == b'%' && ((w[1] == b'2' && (w[2] | 0x20) == b'f') || (w[1] == b'5' && (w[2] | 0x20) == b'c'))) {
        return true;
    }
    bytes.split(|b| *b == b'/').any(is_dot_segment)
}

/// True when `segment` is `.` or `..`, plain or percent-encoded, once its path
/// parameters are cut off: Tomcat, Jetty and Spring read `..;x` as `..`, so a
/// segment is judged up to its first `;` (or `%3b`, which a backend that decodes
/// before it splits reads as one).
fn is_dot_segment(segment: &[u8]) -> bool {
    let end = segment
        .iter()
        .enumerate()
        .position(|(i, b)| {
            *b == b';' || (*b == b'%' && segment.get(i + 1) == Some(&b'3') && segment.get(i + 2).map(|c| c | 0x20) == Some(b'b'))
        })
        .unwrap_or(segment.len());
    let name = &segment[..end];
    [&b"."[..], b"..", b"%2e", b"%2e%2e", b".%2e", b"%2e."].iter().any(|dot| name.eq_ignore_ascii_case(dot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_handling() {
        assert_eq!(split_query("/a?b=1?c"), ("/a", Some("b=1?c")));
        assert_eq!(split_query("/a"), ("/a", None));
        assert_eq!(target_joining_queries("/m", "/r", Some("a=1"), Some("b=2")), "/m/r?a=1&b=2");
        assert_eq!(target_joining_queries("/m", "", Some(""), Some("b=2")), "/m?b=2");
        assert_eq!(target_joining_queries("/m", "", Some("a=1"), Some("")), "/m?a=1");
        assert_eq!(target_joining_queries("/m", "", None, None), "/m");
        assert_eq!(target_joining_queries("", "", None, Some("b=2")), "/?b=2");
        assert_eq!(with_query("/p", Some("x")), "/p?x");
    }

    #[test]
    fn segment_prefixes() {
        assert_eq!(strip_segment_prefix("/blog/a/1", "/blog"), Some("/a/1"));
        assert_eq!(strip_segment_prefix("/blog", "/blog"), Some(""));
        assert_eq!(strip_segment_prefix("/blog/", "/blog"), Some("/"));
        assert_eq!(strip_segment_prefix("/blogger", "/blog"), None);
        assert_eq!(strip_segment_prefix("/other", "/blog"), None);
        assert_eq!(strip_segment_prefix("/x", ""), Some("/x"));
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalize_prefix("/blog/").as_deref(), Ok("/blog"));
        assert_eq!(normalize_prefix("/").as_deref(), Ok(""));
        assert_eq!(normalize_prefix("").as_deref(), Ok(""));
        assert_eq!(normalize_prefix("/a/b").as_deref(), Ok("/a/b"));
        assert!(normalize_prefix("blog").is_err());
        assert!(normalize_prefix("/a/../b").is_err());
        assert!(normalize_prefix("/a/..;/b").is_err());
        assert!(normalize_prefix("/a/.;x").is_err());
        assert!(normalize_prefix("/a//b").is_err());
        assert!(normalize_prefix("/a%2Fb").is_err());
        assert!(normalize_prefix("/a?b").is_err());
        assert!(normalize_prefix("/a\\b").is_err());
        assert!(normalize_prefix("/a b").is_err());
    }

    #[test]
    fn unsafe_segments_as_the_lowercasing_reading_found_them() {
        // What the function did before it stopped allocating: lowercase, then look.
        let reference = |path: &str| {
            let lower = path.to_ascii_lowercase();
            path.contains('\\')
                || lower.contains("%2f")
                || lower.contains("%5c")
                || lower.split('/').any(|segment| {
                    let name = segment.split(';').next().unwrap_or_default();
                    let name = name.split("%3b").next().unwrap_or_default();
                    matches!(name, "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e.")
                })
        };
        let alphabet = ['/', '.', '%', '2', '5', 'e', 'E', 'f', 'F', 'c', 'C', '\\', 'a', 'é', ';', '3', 'b'];
        let mut paths = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = paths.iter().flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}"))).collect();
            for path in &longer {
                assert_eq!(has_unsafe_segment(path), reference(path), "{path:?}");
            }
            paths = longer;
        }
    }

    #[test]
    fn unsafe_segments() {
        assert!(has_unsafe_segment("/a/../b"));
        assert!(has_unsafe_segment("/a/%2E%2e/b"));
        assert!(has_unsafe_segment("/a/./b"));
        assert!(has_unsafe_segment("/a%2Fb"));
        assert!(has_unsafe_segment("/a\\b"));
        assert!(!has_unsafe_segment("/a/..b/c.d"));
        // Path parameters: `..;` is `..` to Tomcat, Jetty and Spring.
        assert!(has_unsafe_segment("/..;/admin"));
        assert!(has_unsafe_segment("/a/.;x/b"));
        assert!(has_unsafe_segment("/a/%2e%2e;jsessionid=1/b"));
        assert!(has_unsafe_segment("/a/..%3Bx/b"));
        assert!(!has_unsafe_segment("/a/..x;y/b"));
        assert!(!has_unsafe_segment("/a/b;..;/c"));
        assert!(!has_unsafe_segment("/"));
    }
}
