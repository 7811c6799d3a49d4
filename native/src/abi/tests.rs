//! The binding against a stand-in for Envoy: the callbacks of `raw` are defined here
//! over a plain Rust header map, so that every pointer the wrappers pass and read is
//! exercised (scripts/test.sh runs these under AddressSanitizer, or valgrind).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::slot::FilterSlot;
use super::{handles::*, hooks::*, raw::*, traits::*};
use std::cell::RefCell;
use std::ffi::{c_void, CStr};

/// A local reply: status, headers, body, details.
type Reply = (u32, Vec<(String, String)>, Vec<u8>, String);

/// What Envoy would hold for one stream.
#[derive(Default)]
struct FakeStream {
    request: Vec<(Vec<u8>, Vec<u8>)>,
    response: Vec<(Vec<u8>, Vec<u8>)>,
    reply: Option<Reply>,
    source_address: Option<Vec<u8>>,
    filter_state: Vec<(Vec<u8>, Vec<u8>)>,
    /// The typed objects set, by key: Envoy's factories are not here, so any value goes.
    typed_filter_state: Vec<(Vec<u8>, Vec<u8>)>,
    counters: Vec<(usize, u64)>,
    /// Calls back into the module filter at this address from inside the callbacks, as
    /// Envoy does: a local reply runs the response hook (then destroys the filter when
    /// `destroy_on_reply`), continuing hands over the held body.
    call_back: Option<*const c_void>,
    destroy_on_reply: bool,
    /// What the hooks called back answered.
    called_back: Vec<String>,
    /// The details of a reset.
    reset: Option<String>,
}

thread_local! {
    static LOG: RefCell<Vec<(LogLevel, String)>> = const { RefCell::new(Vec::new()) };
    static DEFINED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn bytes(ptr: *const u8, len: usize) -> Vec<u8> {
    if ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: the module passes (pointer, length) of live memory for the call.
    unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()
}

fn fake<'a>(filter: *mut c_void) -> &'a mut FakeStream {
    // SAFETY: every test passes a pointer to a FakeStream it owns for the call.
    unsafe { &mut *(filter as *mut FakeStream) }
}

fn map(stream: &mut FakeStream, map: HeaderMap) -> &mut Vec<(Vec<u8>, Vec<u8>)> {
    match map {
        HeaderMap::Request => &mut stream.request,
        HeaderMap::Response => &mut stream.response,
    }
}

fn lend(out: *mut EnvoyBuffer, value: &[u8]) {
    // SAFETY: `out` points to the module's buffer for the call; `value` lives in
    // the FakeStream, which outlives the copy the module makes.
    unsafe { *out = EnvoyBuffer { ptr: value.as_ptr(), length: value.len() } }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_log(level: LogLevel, message: ModuleBuffer) {
    let text = String::from_utf8(bytes(message.ptr, message.length)).unwrap();
    LOG.with(|l| l.borrow_mut().push((level, text)));
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_log_enabled(_level: LogLevel) -> bool {
    true
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, m: HeaderMap) -> usize {
    map(fake(filter), m).len()
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_headers(filter: *mut c_void, m: HeaderMap, out: *mut EnvoyHttpHeader) -> bool {
    for (i, (k, v)) in map(fake(filter), m).iter().enumerate() {
        let h = EnvoyHttpHeader { key_ptr: k.as_ptr(), key_length: k.len(), value_ptr: v.as_ptr(), value_length: v.len() };
        // SAFETY: the module sized `out` with get_headers_size.
        unsafe { out.add(i).write(h) };
    }
    true
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_header(
    filter: *mut c_void,
    m: HeaderMap,
    key: ModuleBuffer,
    out: *mut EnvoyBuffer,
    index: usize,
    count: *mut usize,
) -> bool {
    let name = bytes(key.ptr, key.length);
    let values: Vec<&Vec<u8>> = map(fake(filter), m).iter().filter(|(k, _)| *k == name).map(|(_, v)| v).collect();
    if index == 0 && !count.is_null() {
        // SAFETY: the module passes its own counter for the call.
        unsafe { *count = values.len() };
    }
    match values.get(index) {
        Some(v) => {
            lend(out, v);
            true
        }
        None => false,
    }
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_header(
    filter: *mut c_void,
    m: HeaderMap,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    let headers = map(fake(filter), m);
    let name = bytes(key.ptr, key.length);
    headers.retain(|(k, _)| *k != name);
    if !value.ptr.is_null() {
        headers.push((name, bytes(value.ptr, value.length)));
    }
    true
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_add_header(
    filter: *mut c_void,
    m: HeaderMap,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    map(fake(filter), m).push((bytes(key.ptr, key.length), bytes(value.ptr, value.length)));
    true
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_send_response(
    filter: *mut c_void,
    status: u32,
    headers: *mut ModuleHttpHeader,
    headers_size: usize,
    body: ModuleBuffer,
    details: ModuleBuffer,
) {
    let text = |p, l| String::from_utf8(bytes(p, l)).unwrap();
    let list = (0..headers_size)
        .map(|i| {
            // SAFETY: the module passes an array of `headers_size` entries.
            let h = unsafe { &*headers.add(i) };
            (text(h.key_ptr, h.key_length), text(h.value_ptr, h.value_length))
        })
        .collect();
    let stream = fake(filter);
    stream.reply = Some((status, list, bytes(body.ptr, body.length), text(details.ptr, details.length)));
    if let Some(module_filter) = stream.call_back {
        let status = envoy_dynamic_module_on_http_filter_response_headers(filter, module_filter, true);
        fake(filter).called_back.push(format!("response_headers {status:?}"));
        if fake(filter).destroy_on_reply {
            envoy_dynamic_module_on_http_filter_destroy(module_filter);
            fake(filter).called_back.push("destroyed".into());
        }
    }
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
    filter: *mut c_void,
    id: Attribute,
    out: *mut EnvoyBuffer,
) -> bool {
    match (id, &fake(filter).source_address) {
        (Attribute::SourceAddress, Some(a)) => {
            lend(out, a);
            true
        }
        (Attribute::RequestProtocol, _) => {
            lend(out, b"HTTP/1.1");
            true
        }
        _ => false,
    }
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_int(_: *mut c_void, id: Attribute, out: *mut u64) -> bool {
    // SAFETY: `out` is the module's u64 for the call.
    (id == Attribute::SourcePort).then(|| unsafe { *out = 40_000 }).is_some()
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_bool(_: *mut c_void, _: Attribute, _: *mut bool) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
    filter: *mut c_void,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    let (key, value) = (bytes(key.ptr, key.length), bytes(value.ptr, value.length));
    let state = &mut fake(filter).filter_state;
    state.retain(|(k, _)| *k != key);
    state.push((key, value));
    true
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_filter_state_typed(
    filter: *mut c_void,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    let (key, value) = (bytes(key.ptr, key.length), bytes(value.ptr, value.length));
    let state = &mut fake(filter).typed_filter_state;
    state.retain(|(k, _)| *k != key);
    state.push((key, value));
    true
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
    filter: *mut c_void,
    key: ModuleBuffer,
    out: *mut EnvoyBuffer,
) -> bool {
    let key = bytes(key.ptr, key.length);
    match fake(filter).filter_state.iter().find(|(k, _)| *k == key) {
        Some((_, a)) => {
            lend(out, a);
            true
        }
        _ => false,
    }
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
    _: *mut c_void,
    name: ModuleBuffer,
    _: *mut ModuleBuffer,
    labels: usize,
    id: *mut usize,
) -> u32 {
    assert_eq!(labels, 0);
    DEFINED.with(|d| {
        let mut d = d.borrow_mut();
        d.push(String::from_utf8(bytes(name.ptr, name.length)).unwrap());
        // SAFETY: `id` is the module's usize for the call.
        unsafe { *id = d.len() - 1 };
    });
    0
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
    filter: *mut c_void,
    id: usize,
    _: *mut ModuleBuffer,
    _: usize,
    by: u64,
) -> u32 {
    fake(filter).counters.push((id, by));
    0
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
    _: *mut c_void,
    _: usize,
    _: *mut ModuleBuffer,
    _: usize,
    _: u64,
) -> u32 {
    0
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_http_callout(
    filter: *mut c_void,
    id: *mut u64,
    cluster: ModuleBuffer,
    headers: *mut ModuleHttpHeader,
    headers_size: usize,
    _body: ModuleBuffer,
    _timeout: u64,
) -> u32 {
    // Records the call as a request header map of its own, then "cluster not found"
    // unless the cluster is "sidecar".
    let f = fake(filter);
    f.response = (0..headers_size)
        .map(|i| {
            // SAFETY: the module passes an array of `headers_size` entries.
            let h = unsafe { &*headers.add(i) };
            (bytes(h.key_ptr, h.key_length), bytes(h.value_ptr, h.value_length))
        })
        .collect();
    if bytes(cluster.ptr, cluster.length) != b"sidecar" {
        return 2;
    }
    // SAFETY: `id` is the module's u64 for the call.
    unsafe { *id = 7 };
    0
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
    _: *mut c_void,
    name: ModuleBuffer,
    _: *mut ModuleBuffer,
    labels: usize,
    id: *mut usize,
) -> u32 {
    assert_eq!(labels, 0);
    DEFINED.with(|d| {
        let mut d = d.borrow_mut();
        d.push(String::from_utf8(bytes(name.ptr, name.length)).unwrap());
        // SAFETY: `id` is the module's usize for the call.
        unsafe { *id = 1000 + d.len() };
    });
    0
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_set_gauge(
    filter: *mut c_void,
    id: usize,
    _: *mut ModuleBuffer,
    _: usize,
    value: u64,
) -> u32 {
    fake(filter).counters.push((id, value));
    0
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_reset_stream(filter: *mut c_void, reason: u32, details: ModuleBuffer) {
    assert_eq!(reason, 0, "a local reset");
    fake(filter).reset = Some(String::from_utf8(bytes(details.ptr, details.length)).unwrap());
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void) {
    fake(filter).counters.push((usize::MAX, 0));
    if let Some(module_filter) = fake(filter).call_back {
        let status = envoy_dynamic_module_on_http_filter_request_body(filter, module_filter, true);
        fake(filter).called_back.push(format!("request_body {status:?}"));
    }
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_http_callout(
    _: *mut c_void,
    _: *mut u64,
    _: ModuleBuffer,
    _: *mut ModuleHttpHeader,
    _: usize,
    _: ModuleBuffer,
    _: u64,
) -> u32 {
    2
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(_: *mut c_void) -> *mut c_void {
    Box::into_raw(Box::new(std::sync::atomic::AtomicU64::new(0))) as *mut c_void
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: *mut c_void, _: u64) {
    // SAFETY: made by the stand-in scheduler_new, alive until delete.
    unsafe { &*(scheduler as *const std::sync::atomic::AtomicU64) }.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void) {
    // SAFETY: made by the stand-in scheduler_new, deleted once.
    drop(unsafe { Box::from_raw(scheduler as *mut std::sync::atomic::AtomicU64) });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_new(_: *mut c_void) -> *mut c_void {
    Box::into_raw(Box::new(std::sync::atomic::AtomicU64::new(0))) as *mut c_void
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: *mut c_void, _: u64) {
    // SAFETY: made by the stand-in scheduler_new, alive until delete.
    unsafe { &*(scheduler as *const std::sync::atomic::AtomicU64) }.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void) {
    // SAFETY: made by the stand-in scheduler_new, deleted once.
    drop(unsafe { Box::from_raw(scheduler as *mut std::sync::atomic::AtomicU64) });
}

fn stream_of(fake: &mut FakeStream) -> Stream {
    Stream(fake as *mut FakeStream as *mut c_void)
}

fn envoy_buffer(bytes: &[u8]) -> EnvoyBuffer {
    EnvoyBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
}

#[test]
fn the_abi_version_is_envoy_1_40s() {
    // SAFETY: the hook returns a pointer to a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(envoy_dynamic_module_on_program_init()) };
    assert_eq!(version.to_str(), Ok("v0.2.0"));
}

#[test]
fn a_map_of_more_headers_than_the_stack_holds_is_read_whole() {
    let request: Vec<(Vec<u8>, Vec<u8>)> = (0..40).map(|i| (format!("x-{i}").into_bytes(), vec![b'v'; i])).collect();
    let mut f = FakeStream { request: request.clone(), ..FakeStream::default() };
    let s = stream_of(&mut f);
    let got = s.headers(HeaderMap::Request);
    assert_eq!(got.len(), 40);
    assert!(got.iter().zip(&request).all(|((n, v), (rn, rv))| n.as_bytes() == rn.as_slice() && v == rv));
}

#[test]
fn headers_are_copied_out_and_edited_in_place() {
    let mut f = FakeStream {
        request: vec![(b"x-a".to_vec(), b"1".to_vec()), (b"x-bin".to_vec(), vec![0xff, 0x00, b'z']), (b"x-empty".to_vec(), vec![])],
        ..FakeStream::default()
    };
    let s = stream_of(&mut f);
    let got = s.headers(HeaderMap::Request);
    assert_eq!(got, [("x-a".into(), b"1".to_vec()), ("x-bin".into(), vec![0xff, 0, b'z']), ("x-empty".into(), vec![])]);
    assert!(s.headers(HeaderMap::Response).is_empty());
    let sizes = s.read_headers(HeaderMap::Request, |count, names, values| (count, names, values), |_, _, _| {});
    assert_eq!(sizes, (3, 3 + 5 + 7, 1 + 3));
    s.set_header(HeaderMap::Request, "x-a", b"2");
    s.set_header(HeaderMap::Request, "x-set-empty", b"");
    s.add_header(HeaderMap::Request, "x-a", b"3");
    s.remove_header(HeaderMap::Request, "x-bin");
    s.add_header(HeaderMap::Response, "set-cookie", b"a=1");
    assert_eq!(
        f.request,
        [
            (b"x-empty".to_vec(), vec![]),
            (b"x-a".to_vec(), b"2".to_vec()),
            (b"x-set-empty".to_vec(), vec![]),
            (b"x-a".to_vec(), b"3".to_vec())
        ],
        "an empty value is set, not taken for a removal"
    );
    assert_eq!(f.response, [(b"set-cookie".to_vec(), b"a=1".to_vec())]);
}

#[test]
fn one_header_is_read_by_name_with_every_value() {
    let mut f = FakeStream {
        response: vec![
            (b"set-cookie".to_vec(), b"a=1".to_vec()),
            (b"location".to_vec(), b"/x".to_vec()),
            (b"set-cookie".to_vec(), vec![0xff, b'b']),
            (b"set-cookie".to_vec(), vec![]),
        ],
        ..FakeStream::default()
    };
    let s = stream_of(&mut f);
    assert_eq!(s.header_values(HeaderMap::Response, "set-cookie"), [b"a=1".to_vec(), vec![0xff, b'b'], vec![]]);
    assert_eq!(s.header_values(HeaderMap::Response, "location"), [b"/x".to_vec()]);
    assert!(s.header_values(HeaderMap::Response, "content-location").is_empty());
    assert!(s.header_values(HeaderMap::Request, "location").is_empty());
}

#[test]
fn replies_attributes_and_the_peer() {
    let mut f = FakeStream { filter_state: vec![(b"wsgiproxy_peer".to_vec(), b"[::1]:5555".to_vec())], ..FakeStream::default() };
    let s = stream_of(&mut f);
    assert_eq!(s.filter_state("wsgiproxy_peer").as_deref(), Some(&b"[::1]:5555"[..]));
    assert_eq!(s.filter_state("other"), None);
    assert!(s.set_filter_state("wsgiproxy_app_prepared", b"1"));
    assert_eq!(s.filter_state("wsgiproxy_app_prepared").as_deref(), Some(&b"1"[..]));
    assert_eq!(s.attribute_bytes(Attribute::SourceAddress), None);
    assert_eq!(s.attribute_bytes(Attribute::RequestProtocol).as_deref(), Some(&b"HTTP/1.1"[..]));
    assert_eq!(s.attribute_int(Attribute::SourcePort), Some(40_000));
    assert_eq!(s.attribute_int(Attribute::DestinationPort), None);
    assert_eq!(s.attribute_bool(Attribute::ConnectionMtls), None);
    s.send_response(403, &[("x-wsgiproxy-error", "untrusted_peer"), ("content-type", "text/plain")], b"no\n", "wsgiproxy_untrusted_peer");
    s.increment_counter(3, 2);
    let (status, headers, body, details) = f.reply.take().unwrap();
    assert_eq!((status, body.as_slice(), details.as_str()), (403, &b"no\n"[..], "wsgiproxy_untrusted_peer"));
    assert_eq!(headers, [("x-wsgiproxy-error".into(), "untrusted_peer".into()), ("content-type".into(), "text/plain".into())]);
    assert_eq!(f.counters, [(3, 2)]);
}

/// Runs one request through the hooks, as Envoy would: config, filter, headers, destroy.
fn through_hooks(config: &str, f: &mut FakeStream) -> HeadersStatus {
    let name = b"wsgiproxy";
    let factory = envoy_dynamic_module_on_http_filter_config_new(std::ptr::null_mut(), envoy_buffer(name), envoy_buffer(config.as_bytes()));
    assert!(!factory.is_null(), "{:?}", LOG.with(|l| l.borrow().clone()));
    let filter = envoy_dynamic_module_on_http_filter_new(factory, std::ptr::null_mut());
    let envoy_side = f as *mut FakeStream as *mut c_void;
    let status = envoy_dynamic_module_on_http_filter_request_headers(envoy_side, filter, true);
    assert_eq!(envoy_dynamic_module_on_http_filter_response_headers(envoy_side, filter, true), HeadersStatus::Continue);
    envoy_dynamic_module_on_http_filter_stream_complete(envoy_side, filter);
    envoy_dynamic_module_on_http_filter_destroy(filter);
    envoy_dynamic_module_on_http_filter_config_destroy(factory);
    status
}

#[test]
fn a_request_through_every_hook() {
    let mut f = FakeStream {
        request: vec![
            (b":authority".to_vec(), b"www.example.com".to_vec()),
            (b":path".to_vec(), b"/blog/x?q=1".to_vec()),
            (b":method".to_vec(), b"GET".to_vec()),
            (b"x-script-name".to_vec(), b"/evil".to_vec()),
        ],
        filter_state: vec![(b"wsgiproxy_peer".to_vec(), b"10.1.2.3:4444".to_vec())],
        ..FakeStream::default()
    };
    let config = r#"{"role": "app", "href": "http://backend:8080/app", "script_name": "/blog",
                     "string_keys": [{"key": "PROTO", "from_property": ["request", "protocol"]}]}"#;
    assert_eq!(through_hooks(config, &mut f), HeadersStatus::Continue);
    let get = |n: &[u8]| f.request.iter().filter(|(k, _)| k == n).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect::<Vec<_>>();
    assert_eq!(get(b":path"), ["/app/x?q=1"]);
    assert_eq!(get(b"x-script-name"), ["/blog"]);
    assert_eq!(get(b"x-forwarded-for"), ["10.1.2.3"]);
    assert_eq!(get(b"x-wsgiproxy-str-0"), ["PROTO HTTP/1.1"]);
    assert!(f.counters.iter().any(|&(_, by)| by == 1));
    assert!(DEFINED.with(|d| d.borrow().iter().any(|n| n == "wsgiproxy.app.rejected.outside_mount")));

    let mut outside = FakeStream {
        request: vec![(b":path".to_vec(), b"/other".to_vec())],
        filter_state: vec![(b"wsgiproxy_peer".to_vec(), b"10.1.2.3:4444".to_vec())],
        ..FakeStream::default()
    };
    assert_eq!(through_hooks(config, &mut outside), HeadersStatus::StopIteration);
    let (status, headers, _, _) = outside.reply.unwrap();
    assert_eq!(status, 404);
    assert!(headers.contains(&("x-wsgiproxy-error".into(), "outside_mount".into())));

    // No TCP peer to send as the client address: refused, never a guess.
    let mut unknown = FakeStream { request: vec![(b":path".to_vec(), b"/blog/x".to_vec())], ..FakeStream::default() };
    assert_eq!(through_hooks(config, &mut unknown), HeadersStatus::StopIteration);
    let (status, headers, _, _) = unknown.reply.unwrap();
    assert_eq!(status, 500);
    assert!(headers.contains(&("x-wsgiproxy-error".into(), "peer_unknown".into())));
}

#[test]
fn a_bad_configuration_is_refused_with_the_field_named() {
    for (config, expected) in [
        (&b"{\"role\": \"app\", \"href\": \"http://x/\", \"script_name\": \"blog\"}"[..], "field `script_name`: must start with /"),
        (b"\xff\xfe", "not valid JSON"),
        (b"{\"role\": \"spawn\", \"app\": \"a\"}", "field `sidecar_cluster`"),
    ] {
        let made = envoy_dynamic_module_on_http_filter_config_new(std::ptr::null_mut(), envoy_buffer(b"wsgiproxy"), envoy_buffer(config));
        assert!(made.is_null());
        let logged = LOG.with(|l| l.borrow().last().cloned()).unwrap();
        assert_eq!(logged.0, LogLevel::Error);
        assert!(logged.1.contains(expected), "{logged:?}");
    }
    // Envoy never passes null, but a null destroy must not crash either.
    envoy_dynamic_module_on_http_filter_config_destroy(std::ptr::null());
    envoy_dynamic_module_on_http_filter_destroy(std::ptr::null());
}

/// A stand-in stream a test owns and, like Envoy, reaches through its pointer only (a
/// `&mut` kept beside the pointer would be invalidated by each hook's use of it).
struct Owned(*mut c_void);

impl Owned {
    fn new(stream: FakeStream) -> Owned {
        Owned(Box::into_raw(Box::new(stream)) as *mut c_void)
    }
    fn get(&self) -> &mut FakeStream {
        fake(self.0)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: made by `Owned::new`, freed once.
        drop(unsafe { Box::from_raw(self.0 as *mut FakeStream) });
    }
}

/// The spawn role's configuration against the stand-in sidecar cluster.
fn spawn_factory() -> *const c_void {
    let config = r#"{"role": "spawn", "app": "blog", "sidecar_cluster": "sidecar"}"#;
    let factory = envoy_dynamic_module_on_http_filter_config_new(std::ptr::null_mut(), envoy_buffer(b"s"), envoy_buffer(config.as_bytes()));
    assert!(!factory.is_null(), "{:?}", LOG.with(|l| l.borrow().clone()));
    factory
}

/// Answers the stand-in's callout 7 with `answer` (status 0) or a failure.
fn answer_callout(envoy_side: *mut c_void, filter: *const c_void, answer: Option<&[(&[u8], &[u8])]>) {
    let Some(answer) = answer else {
        return envoy_dynamic_module_on_http_filter_http_callout_done(envoy_side, filter, 7, 1, std::ptr::null(), 0, std::ptr::null(), 0);
    };
    let raw: Vec<EnvoyHttpHeader> = answer
        .iter()
        .map(|(k, v)| EnvoyHttpHeader { key_ptr: k.as_ptr(), key_length: k.len(), value_ptr: v.as_ptr(), value_length: v.len() })
        .collect();
    let body = [envoy_buffer(b"ok")];
    envoy_dynamic_module_on_http_filter_http_callout_done(envoy_side, filter, 7, 0, raw.as_ptr(), raw.len(), body.as_ptr(), body.len());
}

const GRANTED: [(&[u8], &[u8]); 4] = [
    (b":status", b"200"),
    (b"x-wsgiproxy-sidecar", b"1"),
    (b"x-wsgiproxy-upstream", b"127.0.0.1:4321"),
    (b"x-wsgiproxy-lease-ms", b"5000"),
];

#[test]
fn a_callout_and_its_answer() {
    // The spawn role asks the sidecar and holds the whole request, body and trailers,
    // then goes on with the upstream it got: never the one the client named.
    let factory = spawn_factory();
    let filter = envoy_dynamic_module_on_http_filter_new(factory, std::ptr::null_mut());
    let f = Owned::new(FakeStream {
        request: vec![(b":path".to_vec(), b"/".to_vec()), (b"x-envoy-original-dst-host".to_vec(), b"169.254.169.254:80".to_vec())],
        ..FakeStream::default()
    });
    let envoy_side = f.0;
    assert_eq!(envoy_dynamic_module_on_http_filter_request_headers(envoy_side, filter, false), HeadersStatus::StopAllIterationAndWatermark);
    assert!(!f.get().request.iter().any(|(k, _)| k == b"x-envoy-original-dst-host"), "the client's destination is gone at once");
    let sent: Vec<(Vec<u8>, Vec<u8>)> = std::mem::take(&mut f.get().response);
    assert!(sent.contains(&(b":path".to_vec(), b"/v1/ensure/blog".to_vec())), "{sent:?}");
    // Were Envoy to hand over the body or trailers meanwhile, they wait too.
    assert_eq!(envoy_dynamic_module_on_http_filter_request_body(envoy_side, filter, false), BodyStatus::StopIterationAndWatermark);
    assert_eq!(envoy_dynamic_module_on_http_filter_request_trailers(envoy_side, filter), TrailersStatus::StopIteration);
    // An answer to a callout this request did not make is not taken for its own.
    envoy_dynamic_module_on_http_filter_http_callout_done(envoy_side, filter, 8, 1, std::ptr::null(), 0, std::ptr::null(), 0);
    assert!(f.get().reply.is_none());
    answer_callout(envoy_side, filter, Some(&GRANTED));
    let destination = (b"envoy.network.transport_socket.original_dst_address".to_vec(), b"127.0.0.1:4321".to_vec());
    assert_eq!(f.get().typed_filter_state, vec![destination], "the destination is the filter state Envoy's cluster reads");
    assert!(!f.get().request.iter().any(|(k, _)| k == b"x-envoy-original-dst-host"), "and no header: {:?}", f.get().request);
    assert!(f.get().counters.contains(&(usize::MAX, 0)), "the request went on");
    assert_eq!(envoy_dynamic_module_on_http_filter_request_body(envoy_side, filter, true), BodyStatus::Continue);
    // A failed callout (a configuration with no lease yet): a 503 saying the sidecar did not answer.
    let cold_factory = spawn_factory();
    let second = envoy_dynamic_module_on_http_filter_new(cold_factory, std::ptr::null_mut());
    let g = Owned::new(FakeStream::default());
    let envoy_side = g.0;
    assert_eq!(envoy_dynamic_module_on_http_filter_request_headers(envoy_side, second, true), HeadersStatus::StopAllIterationAndWatermark);
    answer_callout(envoy_side, second, None);
    assert_eq!(g.get().reply.as_ref().map(|r| r.0), Some(503));
    // Scheduled events and a failed report callout on the configuration.
    envoy_dynamic_module_on_http_filter_config_scheduled(std::ptr::null_mut(), factory, 0);
    envoy_dynamic_module_on_http_filter_config_http_callout_done(
        std::ptr::null_mut(),
        factory,
        9,
        1,
        std::ptr::null(),
        0,
        std::ptr::null(),
        0,
    );
    for made in [filter, second] {
        envoy_dynamic_module_on_http_filter_destroy(made);
    }
    envoy_dynamic_module_on_http_filter_config_destroy(factory);
    envoy_dynamic_module_on_http_filter_config_destroy(cold_factory);
}

#[test]
fn envoy_calling_back_from_inside_a_hook_never_reaches_the_filter_twice() {
    let factory = spawn_factory();
    // Granted: `continue_decoding` hands over the held body from inside the answer's
    // hook; it goes on (the filter is not entered a second time).
    let filter = envoy_dynamic_module_on_http_filter_new(factory, std::ptr::null_mut());
    let f = Owned::new(FakeStream { call_back: Some(filter), ..FakeStream::default() });
    let envoy_side = f.0;
    envoy_dynamic_module_on_http_filter_request_headers(envoy_side, filter, false);
    answer_callout(envoy_side, filter, Some(&GRANTED));
    assert_eq!(f.get().called_back, ["request_body Continue"]);
    envoy_dynamic_module_on_http_filter_destroy(filter);
    envoy_dynamic_module_on_http_filter_config_destroy(factory);

    // Refused (a configuration with no lease yet): the local reply runs the response
    // hook, then Envoy destroys the filter, all inside `send_response`: the filter is
    // freed once the hook has returned (AddressSanitizer or valgrind see a use after
    // free or a leak otherwise).
    let factory = spawn_factory();
    let filter = envoy_dynamic_module_on_http_filter_new(factory, std::ptr::null_mut());
    let g = Owned::new(FakeStream { call_back: Some(filter), destroy_on_reply: true, ..FakeStream::default() });
    let envoy_side = g.0;
    envoy_dynamic_module_on_http_filter_request_headers(envoy_side, filter, true);
    answer_callout(envoy_side, filter, None);
    assert_eq!(g.get().reply.as_ref().map(|r| r.0), Some(503));
    assert_eq!(g.get().called_back, ["response_headers Continue", "destroyed"]);
    envoy_dynamic_module_on_http_filter_config_destroy(factory);
}

/// A filter whose hooks panic where it is told to, and which answers (and is called
/// back) from inside its callout hook otherwise.
struct Panicking {
    in_hook: &'static str,
}
impl HttpFilter for Panicking {
    fn on_request_headers(&mut self, _: &Stream, _: bool) -> HeadersStatus {
        assert_ne!(self.in_hook, "request_headers", "a bug");
        HeadersStatus::StopIteration
    }
    fn on_response_headers(&mut self, _: &Stream, _: bool) -> HeadersStatus {
        assert_ne!(self.in_hook, "response_headers", "another bug");
        HeadersStatus::Continue
    }
    fn on_callout_done(&mut self, _: &Stream, _: u64, _: Option<CalloutResponse>) {
        panic!("a third bug")
    }
}

#[test]
fn a_panic_never_crosses_into_envoy_and_fails_closed() {
    // On the request path: a 500, and the filter is not called again (its 500 goes out
    // as it is; a late answer does not make a second reply).
    let filter = FilterSlot::into_raw(Box::new(Panicking { in_hook: "request_headers" }));
    let f = Owned::new(FakeStream::default());
    let envoy_side = f.0;
    assert_eq!(envoy_dynamic_module_on_http_filter_request_headers(envoy_side, filter, true), HeadersStatus::StopIteration);
    let (status, headers, _, _) = f.get().reply.take().unwrap();
    assert_eq!(status, 500);
    assert!(headers.contains(&("x-wsgiproxy-error".into(), "internal_error".into())));
    assert_eq!(envoy_dynamic_module_on_http_filter_response_headers(envoy_side, filter, true), HeadersStatus::Continue);
    assert_eq!(envoy_dynamic_module_on_http_filter_request_body(envoy_side, filter, true), BodyStatus::StopIterationAndWatermark);
    envoy_dynamic_module_on_http_filter_http_callout_done(envoy_side, filter, 1, 1, std::ptr::null(), 0, std::ptr::null(), 0);
    assert!(f.get().reply.is_none(), "a poisoned filter is not called again");
    envoy_dynamic_module_on_http_filter_destroy(filter);

    // On the response path: the stream is reset, the response never passed on.
    let filter = FilterSlot::into_raw(Box::new(Panicking { in_hook: "response_headers" }));
    assert_eq!(envoy_dynamic_module_on_http_filter_response_headers(envoy_side, filter, false), HeadersStatus::StopIteration);
    assert_eq!(f.get().reset.take().as_deref(), Some("wsgiproxy_internal_error"));
    assert!(f.get().reply.is_none());
    envoy_dynamic_module_on_http_filter_destroy(filter);

    // A request waiting for a callout's answer is answered, not left hanging.
    let filter = FilterSlot::into_raw(Box::new(Panicking { in_hook: "callout" }));
    envoy_dynamic_module_on_http_filter_http_callout_done(envoy_side, filter, 1, 1, std::ptr::null(), 0, std::ptr::null(), 0);
    assert_eq!(f.get().reply.take().map(|r| r.0), Some(500));
    envoy_dynamic_module_on_http_filter_destroy(filter);
    assert!(LOG.with(|l| l.borrow().iter().any(|(level, m)| *level == LogLevel::Critical && m.contains("panic caught"))));
}

/// Every hook of Envoy 1.40.0's abi.h, as this module declares it: (name, parameter
/// types, return type) with abi.h's C types written as their Rust equivalents (an
/// `..._envoy_ptr` is `*mut c_void`, a `..._module_ptr` `*const c_void`, an enum `u32`
/// or the module's `repr(u32)` enum of it, `size_t` `usize`). Checked by hand against
/// abi.h once, and on each Envoy upgrade; the test below holds the code to it, so that
/// no hook is declared with fewer or other arguments than Envoy passes.
const ABI_1_40_HOOKS: &[(&str, &[&str], &str)] = &[
    ("program_init", &[], "*const c_char"),
    ("http_filter_config_new", &["*mut c_void", "EnvoyBuffer", "EnvoyBuffer"], "*const c_void"),
    ("http_filter_config_destroy", &["*const c_void"], ""),
    ("http_filter_new", &["*const c_void", "*mut c_void"], "*const c_void"),
    ("http_filter_destroy", &["*const c_void"], ""),
    ("http_filter_request_headers", &["*mut c_void", "*const c_void", "bool"], "HeadersStatus"),
    ("http_filter_request_body", &["*mut c_void", "*const c_void", "bool"], "BodyStatus"),
    ("http_filter_request_trailers", &["*mut c_void", "*const c_void"], "TrailersStatus"),
    ("http_filter_response_headers", &["*mut c_void", "*const c_void", "bool"], "HeadersStatus"),
    ("http_filter_response_body", &["*mut c_void", "*const c_void", "bool"], "BodyStatus"),
    ("http_filter_response_trailers", &["*mut c_void", "*const c_void"], "TrailersStatus"),
    ("http_filter_stream_complete", &["*mut c_void", "*const c_void"], ""),
    (
        "http_filter_http_callout_done",
        &["*mut c_void", "*const c_void", "u64", "u32", "*const EnvoyHttpHeader", "usize", "*const EnvoyBuffer", "usize"],
        "",
    ),
    ("http_filter_config_scheduled", &["*mut c_void", "*const c_void", "u64"], ""),
    (
        "http_filter_config_http_callout_done",
        &["*mut c_void", "*const c_void", "u64", "u32", "*const EnvoyHttpHeader", "usize", "*const EnvoyBuffer", "usize"],
        "",
    ),
    ("http_filter_http_stream_headers", &["*mut c_void", "*const c_void", "u64", "*const EnvoyHttpHeader", "usize", "bool"], ""),
    ("http_filter_http_stream_data", &["*mut c_void", "*const c_void", "u64", "*const EnvoyBuffer", "usize", "bool"], ""),
    ("http_filter_http_stream_trailers", &["*mut c_void", "*const c_void", "u64", "*const EnvoyHttpHeader", "usize"], ""),
    ("http_filter_http_stream_complete", &["*mut c_void", "*const c_void", "u64"], ""),
    ("http_filter_http_stream_reset", &["*mut c_void", "*const c_void", "u64", "u32"], ""),
    ("http_filter_scheduled", &["*mut c_void", "*const c_void", "u64"], ""),
    ("http_filter_downstream_above_write_buffer_high_watermark", &["*mut c_void", "*const c_void"], ""),
    ("http_filter_downstream_below_write_buffer_low_watermark", &["*mut c_void", "*const c_void"], ""),
    ("http_filter_local_reply", &["*mut c_void", "*const c_void", "u32", "EnvoyBuffer", "bool"], "u32"),
];

/// The hooks `hooks.rs` exports, read from its source: name → (parameter types, return type).
fn declared_hooks() -> std::collections::BTreeMap<String, (Vec<String>, String)> {
    let source = include_str!("hooks.rs");
    let mut found = std::collections::BTreeMap::new();
    for piece in source.split("pub extern \"C\" fn envoy_dynamic_module_on_").skip(1) {
        let (name, rest) = piece.split_once('(').unwrap();
        let (params, rest) = rest.split_once(')').unwrap();
        let params = params
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.split_once(':').unwrap().1.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let head = rest.split('{').next().unwrap();
        let returns = head.trim().strip_prefix("->").map(|r| r.trim().to_string()).unwrap_or_default();
        found.insert(name.to_string(), (params, returns));
    }
    found
}

#[test]
fn every_hook_is_declared_as_envoy_1_40s_abi_h_has_it() {
    let declared = declared_hooks();
    for (name, params, returns) in ABI_1_40_HOOKS {
        let Some((got_params, got_returns)) = declared.get(*name) else { panic!("hook {name} is not exported") };
        assert_eq!(got_params, params, "the parameters of {name}");
        assert_eq!(got_returns, returns, "the return type of {name}");
    }
    let listed: Vec<&str> = ABI_1_40_HOOKS.iter().map(|h| h.0).collect();
    for name in declared.keys() {
        assert!(listed.contains(&name.as_str()), "{name} is exported but not in abi.h's list");
    }
}
