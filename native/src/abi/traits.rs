//! What the module gives Envoy: a configuration's factory of filters, and each stream's
//! filter. The roles implement these; the hooks (`hooks.rs`) call them through `slot.rs`.

use super::handles::{CalloutResponse, ConfigHandle, Stream};
use super::raw::{BodyStatus, HeadersStatus, TrailersStatus};

/// A filter configuration: makes the per-stream filters. Shared by every worker.
pub trait FilterFactory: Send + Sync {
    fn new_filter(&self) -> Box<dyn HttpFilter>;
    /// A [`Scheduler`] event, on the main thread.
    fn on_scheduled(&self, _config: &ConfigHandle, _event: u64) {}
    /// The answer to [`ConfigHandle::http_callout`] (`None`: it failed).
    fn on_callout_done(&self, _config: &ConfigHandle, _id: u64, _response: Option<CalloutResponse>) {}
}

/// One HTTP stream's filter. Envoy calls it from one worker thread; a hook that Envoy
/// calls from inside another of the same filter does not reach it (see `slot`).
pub trait HttpFilter {
    fn on_request_headers(&mut self, stream: &Stream, end_of_stream: bool) -> HeadersStatus;
    /// A part of the request body. A filter that holds the request holds its body too.
    fn on_request_body(&mut self, _stream: &Stream, _end_of_stream: bool) -> BodyStatus {
        BodyStatus::Continue
    }
    /// The request's trailers. A filter that holds the request holds them too.
    fn on_request_trailers(&mut self, _stream: &Stream) -> TrailersStatus {
        TrailersStatus::Continue
    }
    fn on_response_headers(&mut self, _stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        HeadersStatus::Continue
    }
    /// The answer to [`Stream::http_callout`] (`None`: it failed).
    fn on_callout_done(&mut self, _stream: &Stream, _id: u64, _response: Option<CalloutResponse>) {}
    /// An event committed to the stream's [`super::StreamScheduler`], on its worker thread.
    fn on_scheduled(&mut self, _stream: &Stream, _event: u64) {}
}
