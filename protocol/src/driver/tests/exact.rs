use super::{assert_declared, config};
use crate::config::Config;
use crate::driver::exact::on_request_headers;
use crate::driver::Flow;
use crate::exact::ExactConfig;
use crate::reason::Reason;
use crate::testing::FakeHost;

fn exact() -> ExactConfig {
    match config(r#"{"role":"exact","allow_hosts":["*:*","api.internal:8080"]}"#) {
        Config::Exact(exact) => exact,
        _ => panic!("not an exact configuration"),
    }
}

#[test]
fn before_routing_the_host_is_checked_by_name() {
    let mut host = FakeHost::with_request(&[(":authority", "example.com:8443"), (":path", "/a"), ("x-big", "unread")]);
    assert_eq!(on_request_headers(&exact(), &mut host), Flow::Continue);
    assert_eq!(host.reads, ["header :authority", "upstream_address", "mark wsgiproxy_exact_judged"], "one header read, not the whole map");
    assert_eq!(host.marks, ["wsgiproxy_exact_judged"], "marked for the upstream pass");
    assert_eq!(host.count_of("exact.requests"), 1);
    assert_eq!(host.count_of("exact.forwarded"), 1);
    assert_eq!(host.request.len(), 3, "sent exactly as received");

    let mut refused = FakeHost::with_request(&[(":authority", "127.0.0.1:80")]);
    assert_eq!(on_request_headers(&exact(), &mut refused), Flow::Replied);
    assert_eq!((refused.replies[0].status, refused.replies[0].reason), (403, Reason::DestinationNotAllowed));
    assert_eq!(refused.count_of("exact.rejected.destination_not_allowed"), 1);
    assert_eq!(refused.count_of("exact.forwarded"), 0);

    let mut no_host = FakeHost::with_request(&[(":path", "/")]);
    assert_eq!(on_request_headers(&exact(), &mut no_host), Flow::Replied);
    assert_eq!(no_host.replies[0].reason, Reason::BadHost);
    for host in [&host, &refused, &no_host] {
        assert_declared(host, "exact");
    }
}

#[test]
fn upstream_the_resolved_address_is_checked() {
    let mut public = FakeHost::with_request(&[(":authority", "example.com:443")]);
    public.upstream_address = Some("93.184.216.34:443".into());
    assert_eq!(on_request_headers(&exact(), &mut public), Flow::Continue);
    assert_eq!(public.count_of("exact.resolved_checks"), 1);
    assert_eq!(public.count_of("exact.requests"), 0, "counted once, before routing");
    assert_eq!(public.count_of("exact.forwarded"), 0);

    let mut rebound = FakeHost::with_request(&[(":authority", "example.com:443")]);
    rebound.upstream_address = Some("127.0.0.1:443".into());
    assert_eq!(on_request_headers(&exact(), &mut rebound), Flow::Replied);
    assert_eq!(rebound.count_of("exact.rejected.destination_not_allowed"), 1);

    let mut listed = FakeHost::with_request(&[(":authority", "api.internal:8080")]);
    listed.upstream_address = Some("10.0.0.5:8080".into());
    assert_eq!(on_request_headers(&exact(), &mut listed), Flow::Continue, "a listed name is trusted as listed");
    for host in [&public, &rebound, &listed] {
        assert_declared(host, "exact");
    }
}

#[test]
fn upstream_without_an_address_nothing_goes() {
    // The pre-routing pass let it through; the upstream pass is told no address.
    let mut unknown = FakeHost::with_request(&[(":authority", "example.com:443")]);
    assert_eq!(on_request_headers(&exact(), &mut unknown), Flow::Continue);
    assert_eq!(on_request_headers(&exact(), &mut unknown), Flow::Replied);
    assert_eq!((unknown.replies[0].status, unknown.replies[0].reason), (403, Reason::DestinationNotAllowed));
    assert_eq!(unknown.count_of("exact.resolved_checks"), 1);
    assert_eq!(unknown.count_of("exact.requests"), 1, "the first pass only");
    assert_declared(&unknown, "exact");
}
