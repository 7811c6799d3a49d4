//! An HTTP filter that does nothing: what any proxy-wasm filter costs at least.
//!
//! For attributing costs, its configuration may list host calls to make on each
//! request (`{"ops": ["read_headers", "write_headers", "set_one", "property", "time", "get_one",
//! "response_read", "response_get_three"]}`);
//! the benchmark's baseline runs it with none.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EmptyRoot { ops: Rc::new(Vec::new()) }) });
}}

struct EmptyRoot {
    ops: Rc<Vec<String>>,
}

impl Context for EmptyRoot {}

impl RootContext for EmptyRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        // A deliberately tiny parser: the op names between quotes after "ops".
        let ops = text
            .split_once("\"ops\"")
            .map(|(_, rest)| rest.split('"').skip(1).step_by(2).map(str::to_string).collect())
            .unwrap_or_default();
        self.ops = Rc::new(ops);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Empty { ops: Rc::clone(&self.ops) }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Empty {
    ops: Rc<Vec<String>>,
}

impl Context for Empty {}

impl HttpContext for Empty {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut headers = Vec::new();
        for op in self.ops.iter() {
            match op.as_str() {
                "read_headers" => headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default(),
                "write_headers" => {
                    let map: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                    let _ = hostcalls::set_map_bytes(MapType::HttpRequestHeaders, map);
                }
                "add_six" => {
                    for name in ["x-p1", "x-p2", "x-p3", "x-p4", "x-p5", "x-p6"] {
                        let _ = hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, b"value");
                    }
                }
                "set_six" => {
                    for name in ["x-p1", "x-p2", "x-p3", "x-p4", "x-p5", "x-p6"] {
                        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(b"value"));
                    }
                }
                "set_one" => {
                    let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, "x-probe", Some(b"1"));
                }
                "property" => {
                    let _ = hostcalls::get_property(vec!["source", "address"]);
                }
                "time" => {
                    let _ = hostcalls::get_current_time();
                }
                "get_one" => {
                    let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-probe-absent");
                }
                _ => {}
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for op in self.ops.iter() {
            match op.as_str() {
                "response_read" => {
                    let _ = hostcalls::get_map_bytes(MapType::HttpResponseHeaders);
                }
                "response_get_three" => {
                    for name in ["location", "content-location", "set-cookie"] {
                        let _ = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name);
                    }
                }
                _ => {}
            }
        }
        Action::Continue
    }
}
