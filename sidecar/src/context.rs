//! What every app shares: the spawner, the Docker client, the metrics, the lease,
//! whether the sidecar is shutting down, and the book of children, ports and
//! containers, persisted together in the state file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::docker::Docker;
use crate::leftovers::{boot_id, unix_ms, ContainerRecord, HeldPort, Record, State, StateFile};
use crate::metrics::Metrics;
use crate::ports::{self, PortBook};
use crate::process::{ChildHandle, Spawner};

/// What every app shares.
pub struct Context {
    pub spawner: Spawner,
    /// Set when an app is a container.
    pub docker: Option<Docker>,
    pub metrics: Metrics,
    pub lease: Duration,
    /// This sidecar's name among those sharing a service (its activity stamp's label).
    pub sidecar_id: String,
    state_file: StateFile,
    /// Children and ports, persisted together in the state file.
    book: Mutex<Book>,
    /// Set once SIGTERM or SIGINT arrived: nothing starts any more.
    shutting_down: AtomicBool,
}

struct Book {
    children: Vec<Record>,
    ports: PortBook,
    containers: Vec<ContainerRecord>,
}

impl Context {
    /// `earlier`: what the previous run of the sidecar left in the state directory
    /// (its leftovers already stopped): its ports stay quarantined, since Envoy
    /// workers may still hold leases for them.
    pub fn new(
        spawner: Spawner,
        docker: Option<Docker>,
        lease: Duration,
        first_port: u16,
        fixed_ports: impl IntoIterator<Item = u16>,
        state_file: StateFile,
        earlier: Option<State>,
    ) -> Context {
        let mut ports = PortBook::new(first_port, fixed_ports);
        // Containers it started: the apps take over those still running as they were.
        let containers = earlier.as_ref().map(|e| e.containers.clone()).unwrap_or_default();
        if let Some(earlier) = earlier {
            let now = Instant::now();
            let now_ms = unix_ms(SystemTime::now());
            // Its grants may be used until its lease ran out, counted from now (it may
            // have died just now), plus the margin.
            let longest = Duration::from_millis(earlier.lease_ms) + ports::QUARANTINE_MARGIN;
            let held = earlier.children.iter().map(|c| (c.app.clone(), c.port, None));
            let held = held.chain(earlier.ports.iter().map(|p| (p.app.clone(), p.port, p.until_unix_ms)));
            for (app, port, until_ms) in held.filter(|(_, port, _)| *port != 0) {
                let left = match until_ms {
                    None => longest,
                    Some(ms) => Duration::from_millis(ms.saturating_sub(now_ms)).min(longest),
                };
                if !left.is_zero() {
                    ports.quarantine(&app, port, now + left);
                }
            }
        }
        let metrics = Metrics::default();
        let docker = docker.map(|d| d.counting_errors(metrics.docker_errors()));
        let ctx = Context {
            spawner,
            docker,
            metrics,
            lease,
            sidecar_id: String::new(),
            state_file,
            book: Mutex::new(Book { children: Vec::new(), ports, containers }),
            shutting_down: AtomicBool::new(false),
        };
        if let Ok(book) = ctx.book.lock() {
            ctx.persist(&book);
        }
        ctx
    }

    /// Names this sidecar among those sharing a service.
    pub fn with_sidecar_id(mut self, id: String) -> Context {
        self.sidecar_id = id;
        self
    }

    fn persist(&self, book: &Book) {
        let now = Instant::now();
        let now_ms = unix_ms(SystemTime::now());
        let ports = book
            .ports
            .held(now)
            .into_iter()
            .map(|(app, port, left)| HeldPort {
                app,
                port,
                until_unix_ms: left.map(|l| now_ms.saturating_add(l.as_millis().try_into().unwrap_or(u64::MAX))),
            })
            .collect();
        self.state_file.write(&State {
            boot_id: boot_id(),
            lease_ms: self.lease.as_millis().try_into().unwrap_or(u64::MAX),
            children: book.children.clone(),
            ports,
            containers: book.containers.clone(),
        });
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        match self.book.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn remember_child(&self, app: &str, child: &ChildHandle, port: u16) {
        let mut book = self.book();
        book.children.push(Record { app: app.to_string(), pid: child.pid, start_time: child.start_time, port });
        self.persist(&book);
    }

    pub fn forget_child(&self, pid: u32) {
        let mut book = self.book();
        book.children.retain(|r| r.pid != pid);
        self.persist(&book);
    }

    pub fn take_port(&self, app: &str, fixed: Option<u16>) -> Option<u16> {
        let mut book = self.book();
        let port = book.ports.take(app, fixed, Instant::now(), &ports::is_free)?;
        self.persist(&book);
        Some(port)
    }

    /// `app` no longer uses `port`: other apps may take it once every lease granted
    /// for it has run out.
    pub fn release_port(&self, app: &str, port: u16) {
        let mut book = self.book();
        book.ports.release(app, port, Instant::now() + self.lease + ports::QUARANTINE_MARGIN);
        self.persist(&book);
    }

    /// Records a container the sidecar is starting or started (replacing what was
    /// recorded of it).
    pub fn remember_container(&self, record: ContainerRecord) {
        let mut book = self.book();
        book.containers.retain(|r| r.id != record.id);
        book.containers.push(record);
        self.persist(&book);
    }

    /// The container is stopped, or was never started: it is no longer the sidecar's.
    pub fn forget_container(&self, id: &str) {
        let mut book = self.book();
        book.containers.retain(|r| r.id != id);
        self.persist(&book);
    }

    /// What the sidecar recorded of the containers it started for `app`.
    pub fn containers_started(&self, app: &str) -> Vec<ContainerRecord> {
        self.book().containers.iter().filter(|r| r.app == app).cloned().collect()
    }

    /// Every container recorded as started, whatever its app.
    pub fn all_containers_started(&self) -> Vec<ContainerRecord> {
        self.book().containers.clone()
    }

    /// From now on, nothing starts: ensure calls answer 503.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
