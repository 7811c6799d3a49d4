//! The `spawn` role's request path and activity reports.
//!
//! A request with a live lease goes straight on to the app; otherwise the whole
//! request is held while the sidecar's `/v1/ensure/{app}` answers (a long poll over a
//! cold start), and only the answer to that callout lets it go on or answers 503.
//! Where it goes is Envoy's filter state [`ORIGINAL_DST_STATE`], never a header: a
//! request that reaches the on-demand cluster without this role (a second listener, a
//! route that disables the filter) has no destination, and a client's
//! `x-envoy-original-dst-host` is removed and never written back.
//!
//! The loader keeps the lease, the activity counts and the sidecar's health
//! ([`LeaseHolder`]): the Wasm filter one per worker VM, the native module one per
//! configuration, shared by Envoy's workers behind locks. The loader's tick sends the
//! activity reports from the configuration's own context ([`ReportHost`]):
//! [`send_report`], then [`on_report_answer`] when the answer comes.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::config::SpawnConfig;
use crate::host::{CalloutAnswer, HeaderMap, Host, ReportHost, Warning};
use crate::reason::Reason;
use crate::request::LocalReply;
use crate::spawn::{
    ensure_answer, report_answer, unreachable_reply, CallHealth, EnsureAnswer, LeaseState, ReportAnswer, COLD_START_HEADER,
    ORIGINAL_DST_STATE, SIDECAR_IN_FLIGHT, SIDECAR_REPORTER, SIDECAR_STARTED, SIDECAR_WAIT, UPSTREAM_HEADER, UPSTREAM_RECORD,
};
use crate::waiting_page::{starting_reply, wants_page};

/// The role's counters, as [`crate::counters::spawn::ALL`] declares them.
pub const REQUESTS: &str = "spawn.requests";
pub const LEASE_HITS: &str = "spawn.lease_hits";
pub const ENSURE_CALLS: &str = "spawn.ensure_calls";
pub const COLD_STARTS: &str = "spawn.cold_starts";
pub const UNAVAILABLE: &str = "spawn.unavailable";
pub const REPORTS: &str = "spawn.reports";
pub const CONNECT_FAILURES: &str = "spawn.connect_failures";
pub const WAITING_PAGES: &str = "spawn.waiting_pages";
pub const UPSTREAM_UNSET: &str = "spawn.upstream_unset";

/// How long an activity report may take (the sidecar answers at once).
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a loader keeps what the role's streams and reports share. Each call runs its
/// closure alone and makes no host call inside it, so that no lock is held across one.
pub trait LeaseHolder {
    /// Runs `f` on the lease and the activity counts.
    fn with_lease<R>(&self, f: impl FnOnce(&mut LeaseState) -> R) -> R;

    /// Runs `f` on whether calls to the sidecar go through.
    fn with_health<R>(&self, f: impl FnOnce(&mut CallHealth) -> R) -> R;

    /// Identifies this holder to the sidecar, which counts in-flight requests per reporter.
    fn reporter(&self) -> &str;
}

/// What the loader's request-headers hook does next.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnFlow {
    /// The request goes on to the app.
    Continue,
    /// The whole request (headers, body, trailers) waits for the sidecar's answer.
    Held,
    /// The driver answered it: the loader stops it here.
    Replied,
}

/// One stream of the `spawn` role.
#[derive(Debug)]
pub struct SpawnStream {
    /// The `ensure` callout this request waits for: its body and trailers wait too.
    waiting_for: Option<u64>,
    /// Counted among the requests in flight (until [`SpawnStream::on_done`]).
    counted: bool,
    /// How long the request waited for a cold start, told to the client.
    cold_start_ms: Option<u64>,
    /// When the sidecar was asked: a lease it grants counts from then.
    asked_at: SystemTime,
    /// A browser's request, answered with the waiting page if the start outlasts
    /// the configured wait.
    wants_page: bool,
}

impl Default for SpawnStream {
    fn default() -> Self {
        SpawnStream { waiting_for: None, counted: false, cold_start_ms: None, asked_at: SystemTime::UNIX_EPOCH, wants_page: false }
    }
}

impl SpawnStream {
    /// Sends the request on under a live lease, or asks the sidecar and holds it.
    pub fn on_request_headers<H: Host, L: LeaseHolder>(&mut self, config: &SpawnConfig, lease: &L, host: &mut H) -> SpawnFlow {
        // An ORIGINAL_DST cluster configured to read UPSTREAM_HEADER would obey a
        // client's: none survives, whatever happens next. The destination is the
        // filter state `go_on` sets.
        host.remove_header(HeaderMap::Request, UPSTREAM_HEADER);
        host.count(REQUESTS, 1);
        let now = host.now();
        if let Some(upstream) = lease.with_lease(|lease| lease.usable(now).map(str::to_string)) {
            host.count(LEASE_HITS, 1);
            return self.go_on(lease, host, &upstream);
        }
        self.asked_at = now;
        let path = format!("/v1/ensure/{}", config.app);
        let page_after = config.waiting_page.as_ref().filter(|_| {
            wants_page(host.header(HeaderMap::Request, ":method").as_deref(), host.header(HeaderMap::Request, "accept").as_deref())
        });
        let wait_ms = page_after.map(|page| page.after_ms.to_string());
        self.wants_page = wait_ms.is_some();
        let mut extra = vec![(SIDECAR_REPORTER, lease.reporter())];
        if let Some(wait_ms) = &wait_ms {
            extra.push((SIDECAR_WAIT, wait_ms.as_str()));
        }
        let headers = sidecar_request(config, &path, &extra);
        match host.http_callout(&config.sidecar_cluster, &headers, config.ensure_timeout) {
            Ok(id) => {
                host.count(ENSURE_CALLS, 1);
                self.waiting_for = Some(id);
                SpawnFlow::Held
            }
            Err(why) => {
                sidecar_failed(host, lease, format_args!("cannot call the sidecar through cluster {:?}: {why}", config.sidecar_cluster));
                unavailable(host, &unreachable_reply(&config.app))
            }
        }
    }

    /// Whether the request waits for the sidecar: its body and trailers wait with it.
    pub fn holds_request(&self) -> bool {
        self.waiting_for.is_some()
    }

    /// A callout answered (`None`: it failed with no answer). Only the answer to the
    /// callout this request waits for counts: it lets the request go on, or answers 503.
    pub fn on_callout_done<H: Host, L: LeaseHolder, A: CalloutAnswer>(
        &mut self,
        config: &SpawnConfig,
        lease: &L,
        host: &mut H,
        id: u64,
        answer: Option<&A>,
    ) {
        if self.waiting_for != Some(id) {
            return;
        }
        self.waiting_for = None;
        let answer = match answer {
            Some(answer) => ensure_answer(config, &|name| answer.header(name), &|| answer.body()),
            None => EnsureAnswer::Unreachable(unreachable_reply(&config.app)),
        };
        match answer {
            EnsureAnswer::Granted(grant) => {
                sidecar_answered(host, lease);
                let now = host.now();
                lease.with_lease(|lease| lease.ensure_granted(&grant, self.asked_at, now));
                if let Some(ms) = grant.cold_start_ms {
                    host.count(COLD_STARTS, 1);
                    self.cold_start_ms = Some(ms);
                }
                if self.go_on(lease, host, &grant.upstream) == SpawnFlow::Continue {
                    host.resume_request();
                }
            }
            EnsureAnswer::Starting => {
                sidecar_answered(host, lease);
                match config.waiting_page.as_ref().filter(|_| self.wants_page) {
                    Some(page) => {
                        host.count(WAITING_PAGES, 1);
                        host.send_reply(&page.reply(&config.app));
                    }
                    // Only asked for a browser's request: a sidecar that answers so
                    // otherwise is answered as a refusal, not waited for.
                    None => {
                        let _ = unavailable(host, &starting_reply(&config.app, "1"));
                    }
                }
            }
            EnsureAnswer::Refused(reply) => {
                sidecar_answered(host, lease);
                let _ = unavailable(host, &reply);
            }
            EnsureAnswer::Unreachable(reply) => {
                let (app, cluster) = (&config.app, &config.sidecar_cluster);
                sidecar_failed(host, lease, format_args!("the sidecar for {app:?} did not answer (cluster {cluster:?})"));
                let _ = unavailable(host, &reply);
            }
        }
    }

    /// Stops trusting the lease when the app did not accept the connection (it crashed
    /// or was stopped under us), so that the next request asks the sidecar again; tells
    /// the client how long a cold start made it wait.
    pub fn on_response_headers<H: Host, L: LeaseHolder>(&self, lease: &L, host: &mut H) {
        if self.counted && upstream_connect_failed(host) {
            lease.with_lease(LeaseState::revoke);
            host.count(CONNECT_FAILURES, 1);
        }
        if let Some(ms) = self.cold_start_ms {
            host.set_header(HeaderMap::Response, COLD_START_HEADER, ms.to_string().as_bytes());
        }
    }

    /// The stream ends: a request sent to the app is no longer in flight.
    pub fn on_done<L: LeaseHolder>(&mut self, lease: &L) {
        if std::mem::take(&mut self.counted) {
            lease.with_lease(LeaseState::request_finished);
        }
    }

    /// Sends the request to `upstream`, and counts it in flight; or answers it, when
    /// Envoy took the destination neither way (never left for the cluster to choose).
    fn go_on<H: Host, L: LeaseHolder>(&mut self, lease: &L, host: &mut H, upstream: &str) -> SpawnFlow {
        // Both, always: the object the cluster reads, where Envoy lets the role set it
        // (the native module; the Wasm filter from 1.40), and the role's own record,
        // which Envoy's `set_filter_state` filter after this one copies into it (the
        // Wasm filter before 1.40, in a callout's answer).
        let direct = host.set_envoy_filter_state(ORIGINAL_DST_STATE, upstream);
        let recorded = host.set_stream_state(UPSTREAM_RECORD, upstream);
        if !direct && !recorded {
            return upstream_unset(host, upstream);
        }
        lease.with_lease(LeaseState::request_started);
        self.counted = true;
        SpawnFlow::Continue
    }
}

/// Sends the activity report, if one is due (see [`LeaseState::take_report`]): the
/// callout's id, for the loader to match the answer with. One that cannot be sent
/// is undelivered at once.
pub fn send_report<R: ReportHost, L: LeaseHolder>(config: &SpawnConfig, lease: &L, host: &mut R) -> Option<u64> {
    let now = host.now();
    let report = lease.with_lease(|lease| lease.take_report(now, config.report_interval))?;
    let path = format!("/v1/activity/{}", config.app);
    let (started, in_flight) = (report.started.to_string(), report.in_flight.to_string());
    let activity = [(SIDECAR_REPORTER, lease.reporter()), (SIDECAR_STARTED, started.as_str()), (SIDECAR_IN_FLIGHT, in_flight.as_str())];
    let headers = sidecar_request(config, &path, &activity);
    match host.http_callout(&config.sidecar_cluster, &headers, REPORT_TIMEOUT) {
        Ok(id) => {
            host.count(REPORTS, 1);
            Some(id)
        }
        Err(why) => {
            report_failed(host, lease, format_args!("cannot call the sidecar through cluster {:?}: {why}", config.sidecar_cluster));
            lease.with_lease(|lease| lease.report_answered(&ReportAnswer::Undelivered));
            None
        }
    }
}

/// The answer to the activity report in flight (`None`: the callout failed with no
/// answer): renews the lease, or forgets it when the app is not ready or the sidecar
/// did not get the report.
pub fn on_report_answer<R: ReportHost, L: LeaseHolder, A: CalloutAnswer>(
    config: &SpawnConfig,
    lease: &L,
    host: &mut R,
    answer: Option<&A>,
) {
    let answer = match answer {
        Some(answer) => report_answer(config, &|name| answer.header(name)),
        None => ReportAnswer::Undelivered,
    };
    match answer {
        ReportAnswer::Undelivered => report_failed(host, lease, format_args!("an activity report did not reach the sidecar")),
        _ => report_answered(host, lease),
    }
    lease.with_lease(|lease| lease.report_answered(&answer));
}

/// A POST to the sidecar's `path`, with `extra` headers after the pseudo-headers.
fn sidecar_request<'a>(config: &'a SpawnConfig, path: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![(":method", "POST"), (":path", path), (":authority", config.sidecar_authority.as_str())];
    headers.extend_from_slice(extra);
    headers
}

/// Answers in the request's place: the app cannot be had.
fn unavailable<H: Host>(host: &mut H, reply: &LocalReply) -> SpawnFlow {
    host.count(UNAVAILABLE, 1);
    host.debug(format_args!("wsgiproxy spawn: {} {}: {}", reply.status, reply.reason, reply.detail));
    host.send_reply(reply);
    SpawnFlow::Replied
}

/// Envoy took the destination neither way. Refused, counted, and said once.
fn upstream_unset<H: Host>(host: &mut H, upstream: &str) -> SpawnFlow {
    if host.first_time(Warning::UpstreamUnset) {
        host.warn(format_args!(
            "wsgiproxy spawn: Envoy did not take the destination {upstream:?}, as filter state {ORIGINAL_DST_STATE:?} or \
             {UPSTREAM_RECORD:?}: requests are answered 500 upstream_unset, never sent on (logged once)"
        ));
    }
    host.count(UPSTREAM_UNSET, 1);
    host.send_reply(&LocalReply::new(500, Reason::UpstreamUnset, "the proxy could not set where this request goes"));
    SpawnFlow::Replied
}

/// Whether Envoy answered 503 because the upstream refused the connection. A header
/// read is much cheaper than an attribute read: the details are read only on a 503.
fn upstream_connect_failed<H: Host>(host: &mut H) -> bool {
    if host.header(HeaderMap::Response, ":status").as_deref() != Some(b"503") {
        return false;
    }
    host.property(&["response".to_string(), "code_details".to_string()]).is_some_and(|details| {
        let text = String::from_utf8_lossy(&details);
        text.starts_with("upstream_reset_before_response_started") && text.contains("connection_failure")
    })
}

// Calls to the sidecar failing are logged when that begins (a warning) and ends (at
// info level), not at every request: the same from a stream and from a report.

const LOGGED_ONCE: &str = "(logged once until the sidecar answers again)";
const ANSWERS_AGAIN: &str = "wsgiproxy spawn: the sidecar answers again";

fn sidecar_failed<H: Host, L: LeaseHolder>(host: &mut H, lease: &L, what: fmt::Arguments<'_>) {
    if lease.with_health(CallHealth::failed) {
        host.warn(format_args!("wsgiproxy spawn: {what} {LOGGED_ONCE}"));
    } else {
        host.debug(format_args!("wsgiproxy spawn: {what}"));
    }
}

fn sidecar_answered<H: Host, L: LeaseHolder>(host: &mut H, lease: &L) {
    if lease.with_health(CallHealth::answered) {
        host.info(format_args!("{ANSWERS_AGAIN}"));
    }
}

fn report_failed<R: ReportHost, L: LeaseHolder>(host: &mut R, lease: &L, what: fmt::Arguments<'_>) {
    if lease.with_health(CallHealth::failed) {
        host.warn(format_args!("wsgiproxy spawn: {what} {LOGGED_ONCE}"));
    } else {
        host.debug(format_args!("wsgiproxy spawn: {what}"));
    }
}

fn report_answered<R: ReportHost, L: LeaseHolder>(host: &mut R, lease: &L) {
    if lease.with_health(CallHealth::answered) {
        host.info(format_args!("{ANSWERS_AGAIN}"));
    }
}
