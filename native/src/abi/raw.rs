//! The raw C declarations of Envoy 1.40.0's dynamic-module ABI that the module uses:
//! the types and the callbacks Envoy exports. This is the part to diff against
//! `abi.h` on each Envoy upgrade.

use std::ffi::c_void;

// ------------------------------------------------------------------ C types

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub(crate) ptr: *const u8,
    pub(crate) length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub(crate) ptr: *const u8,
    pub(crate) length: usize,
}

impl ModuleBuffer {
    pub(crate) fn of(bytes: &[u8]) -> Self {
        ModuleBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }
    /// A null buffer: what `set_header` takes to remove a header.
    pub(crate) fn null() -> Self {
        ModuleBuffer { ptr: std::ptr::null(), length: 0 }
    }
}

/// `envoy_dynamic_module_type_envoy_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub(crate) key_ptr: *const u8,
    pub(crate) key_length: usize,
    pub(crate) value_ptr: *const u8,
    pub(crate) value_length: usize,
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
pub struct ModuleHttpHeader {
    pub(crate) key_ptr: *const u8,
    pub(crate) key_length: usize,
    pub(crate) value_ptr: *const u8,
    pub(crate) value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HeaderMap {
    Request = 0,
    Response = 2,
}

/// `envoy_dynamic_module_type_log_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// `envoy_dynamic_module_type_attribute_id`: the attributes the roles read. The
/// numbers are the enum's positions in 1.40's abi.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Attribute {
    RequestPath = 0,
    RequestUrlPath = 1,
    RequestHost = 2,
    RequestScheme = 3,
    RequestMethod = 4,
    RequestReferer = 6,
    RequestUserAgent = 7,
    RequestId = 9,
    RequestProtocol = 10,
    RequestQuery = 11,
    RequestSize = 13,
    RequestTotalSize = 14,
    ResponseCode = 15,
    ResponseCodeDetails = 16,
    ResponseSize = 21,
    ResponseTotalSize = 22,
    SourceAddress = 24,
    SourcePort = 25,
    DestinationAddress = 26,
    DestinationPort = 27,
    ConnectionId = 28,
    ConnectionMtls = 29,
    ConnectionRequestedServerName = 30,
    ConnectionTlsVersion = 31,
    ConnectionSubjectLocalCertificate = 32,
    ConnectionSubjectPeerCertificate = 33,
    ConnectionDnsSanLocalCertificate = 34,
    ConnectionDnsSanPeerCertificate = 35,
    ConnectionUriSanLocalCertificate = 36,
    ConnectionUriSanPeerCertificate = 37,
    ConnectionSha256PeerCertificateDigest = 38,
    UpstreamAddress = 41,
    UpstreamPort = 42,
}

/// The status a request- or response-headers hook returns
/// (`envoy_dynamic_module_type_on_http_filter_{request,response}_headers_status`, Envoy's
/// `FilterHeadersStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum HeadersStatus {
    Continue = 0,
    StopIteration = 1,
    /// Stops this filter and every one after it, holding the body and trailers (with
    /// flow control, not a size limit) until the filter continues: Envoy does not even
    /// call this filter's body and trailers hooks meanwhile.
    StopAllIterationAndWatermark = 4,
}

/// The status a request- or response-body hook returns (`..._body_status`, Envoy's
/// `FilterDataStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum BodyStatus {
    Continue = 0,
    /// Holds the data, and what follows, under flow control until the filter continues.
    StopIterationAndWatermark = 2,
}

/// The status a request- or response-trailers hook returns (`..._trailers_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum TrailersStatus {
    Continue = 0,
    StopIteration = 1,
}

// ---------------------------------------------------------------- callbacks

// Envoy's exports, resolved when Envoy loads the module (the binary exports them).
// Tests link stand-ins instead (`tests.rs`).
extern "C" {
    pub(crate) fn envoy_dynamic_module_callback_log(level: LogLevel, message: ModuleBuffer);
    pub(crate) fn envoy_dynamic_module_callback_log_enabled(level: LogLevel) -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, map: HeaderMap) -> usize;
    pub(crate) fn envoy_dynamic_module_callback_http_get_headers(filter: *mut c_void, map: HeaderMap, result: *mut EnvoyHttpHeader)
        -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        map: HeaderMap,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        count: *mut usize,
    ) -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        map: HeaderMap,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        map: HeaderMap,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    pub(crate) fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        id: Attribute,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_get_attribute_int(filter: *mut c_void, id: Attribute, result: *mut u64)
        -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_get_attribute_bool(
        filter: *mut c_void,
        id: Attribute,
        result: *mut bool,
    ) -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_set_filter_state_typed(
        filter: *mut c_void,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> u32;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: *mut c_void,
        callout_id: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    pub(crate) fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        gauge_id: *mut usize,
    ) -> u32;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    /// `reason`: `envoy_dynamic_module_type_http_filter_stream_reset_reason` (0: LocalReset).
    pub(crate) fn envoy_dynamic_module_callback_http_filter_reset_stream(filter: *mut c_void, reason: u32, details: ModuleBuffer);
    pub(crate) fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> u32;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: *mut c_void) -> *mut c_void;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: *mut c_void, event_id: u64);
    pub(crate) fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    pub(crate) fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter: *mut c_void) -> *mut c_void;
    pub(crate) fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: *mut c_void, event_id: u64);
    pub(crate) fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
}
