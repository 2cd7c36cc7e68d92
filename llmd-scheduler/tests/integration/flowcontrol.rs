//! Flow control end to end: the router's flow-control config files resolve; every
//! accepted request ends exactly once whatever happens (a property over random operation
//! sequences, with a negative control showing the check catches a controller that
//! breaks it); and with the runtime, a gate holds a burst back until the pool frees up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use llmd_scheduler::flowcontrol::{
    FlowControlConfig, FlowController, FlowEvent, FlowPlugin, FlowRequest, ItemId, PoolSample, PriorityBandConfig,
    QueueOutcome, RegistryConfig,
};
use llmd_scheduler::{ManualClock, PluginRegistry, SchedulerConfig};
use proptest::prelude::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/configs/llm-d-router").join(name)
}

// Loads a router file and resolves its flowControl section as the config loader does.
fn resolve(name: &str) -> (SchedulerConfig, FlowControlConfig) {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let config = SchedulerConfig::from_file(&path, &PluginRegistry::with_builtins()).unwrap_or_else(|e| panic!("{e}"));
    let raw: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let section = raw.get("flowControl");
    let gate = raw
        .get("featureGates")
        .and_then(|g| g.as_array())
        .is_some_and(|g| g.iter().any(|x| x.as_str() == Some("flowControl")));
    let detector =
        section.and_then(|s| s.get("saturationDetector")).and_then(|d| d.get("pluginRef")).and_then(|r| r.as_str());
    let resolved = llmd_scheduler::flowcontrol::resolve(
        section,
        detector.map(|d| ("flowControl.saturationDetector", d)),
        &config.plugins,
        gate,
    )
    .unwrap_or_else(|e| panic!("{name}: {e:?}"))
    .unwrap_or_else(|| panic!("{name}: resolve always gives a config"));
    (config, resolved)
}

#[test]
fn the_routers_flow_control_files_resolve() {
    // The probabilistic admitter with a utilization detector of effectively infinite
    // thresholds; the gate is off, so the legacy admission reads that detector.
    let (c, fc) = resolve("probabilistic-admitter-epp-config.yaml");
    assert!(!fc.enabled);
    assert_eq!((fc.detector_name.as_str(), fc.detector_implicit), ("utilization-detector", false));
    assert!(matches!(c.plugins["probabilistic-admitter"].flow, Some(FlowPlugin::Admitter(_))));

    let (_, fc) = resolve("sim-program-aware-config.yaml");
    assert!(fc.enabled && fc.detector_implicit);
    assert_eq!(fc.registry.priority_bands[&0].fairness.type_name(), "program-aware-fairness");
    assert_eq!(fc.registry.template_for(5).fairness_name, "program-aware-fairness");

    let (_, fc) = resolve("soft-reflective-ceiling-epp-config.yaml");
    assert!(fc.enabled);
    assert_eq!(fc.usage_limit.type_name(), "soft-reflective-ceiling-policy");
    assert_eq!(fc.registry.priority_bands[&0].fairness.type_name(), "global-strict-fairness-policy");
}

/// One step of a random workload.
#[derive(Debug, Clone)]
enum Op {
    Enqueue { flow: u8, priority: i8, bytes: u16 },
    Dispatch { saturation: u8, empty: bool },
    Advance { ms: u16 },
    Sweep,
    Cancel { pick: u8 },
    Complete { pick: u8 },
    SetPriorities { p: Vec<i8> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, -2i8..3, 0u16..400).prop_map(|(flow, priority, bytes)| Op::Enqueue { flow, priority, bytes }),
        4 => (0u8..30, proptest::bool::weighted(0.1)).prop_map(|(saturation, empty)| Op::Dispatch { saturation, empty }),
        2 => (0u16..3000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Sweep),
        1 => any::<u8>().prop_map(|pick| Op::Cancel { pick }),
        2 => any::<u8>().prop_map(|pick| Op::Complete { pick }),
        1 => proptest::collection::vec(-2i8..3, 0..3).prop_map(|p| Op::SetPriorities { p }),
    ]
}

/// The controller under test, or a broken one for the negative control.
trait Controller {
    fn enqueue(&mut self, req: FlowRequest) -> Option<ItemId>;
    fn dispatch(&mut self, pool: PoolSample);
    fn sweep(&mut self);
    fn cancel(&mut self, id: ItemId);
    fn complete(&mut self, id: ItemId);
    fn set_priorities(&mut self, p: Vec<i32>);
    fn shutdown(&mut self);
    fn events(&mut self) -> Vec<FlowEvent>;
    fn queued(&self) -> usize;
}

impl Controller for FlowController {
    fn enqueue(&mut self, req: FlowRequest) -> Option<ItemId> {
        FlowController::enqueue(self, req).ok()
    }
    fn dispatch(&mut self, pool: PoolSample) {
        self.dispatch_cycle(pool);
    }
    fn sweep(&mut self) {
        FlowController::sweep(self);
    }
    fn cancel(&mut self, id: ItemId) {
        FlowController::cancel(self, id);
    }
    fn complete(&mut self, id: ItemId) {
        FlowController::complete(self, id, None);
    }
    fn set_priorities(&mut self, p: Vec<i32>) {
        self.set_desired_priorities(p);
    }
    fn shutdown(&mut self) {
        FlowController::shutdown(self);
    }
    fn events(&mut self) -> Vec<FlowEvent> {
        self.drain_events()
    }
    fn queued(&self) -> usize {
        self.len()
    }
}

/// A deliberately broken controller: a request cancelled just after it was dispatched
/// is reported cancelled too (the double-finalization race the router guards against
/// with `sync.Once`).
struct DoubleFinalizing {
    inner: FlowController,
    dispatched: Vec<FlowEvent>,
    extra: Vec<FlowEvent>,
}

impl Controller for DoubleFinalizing {
    fn enqueue(&mut self, req: FlowRequest) -> Option<ItemId> {
        self.inner.enqueue(req).ok()
    }
    fn dispatch(&mut self, pool: PoolSample) {
        self.inner.dispatch_cycle(pool);
    }
    fn sweep(&mut self) {
        self.inner.sweep();
    }
    fn cancel(&mut self, id: ItemId) {
        if !self.inner.cancel(id) {
            // Not queued any more: the bug reports it cancelled anyway.
            let done = self.dispatched.iter().find(|e| matches!(e, FlowEvent::Finalized(f) if f.item.id() == id));
            if let Some(FlowEvent::Finalized(f)) = done {
                let mut f = f.clone();
                f.outcome = QueueOutcome::EvictedContextCancelled;
                self.extra.push(FlowEvent::Finalized(f));
            }
        }
    }
    fn complete(&mut self, id: ItemId) {
        self.inner.complete(id, None);
    }
    fn set_priorities(&mut self, p: Vec<i32>) {
        self.inner.set_desired_priorities(p);
    }
    fn shutdown(&mut self) {
        self.inner.shutdown();
    }
    fn events(&mut self) -> Vec<FlowEvent> {
        let mut ev = self.inner.drain_events();
        self.dispatched.extend(ev.iter().cloned());
        ev.append(&mut self.extra);
        ev
    }
    fn queued(&self) -> usize {
        self.inner.len()
    }
}

fn small_config() -> FlowControlConfig {
    let mut cfg = FlowControlConfig { enabled: true, ..Default::default() };
    let bands: BTreeMap<i32, PriorityBandConfig> =
        [(1, PriorityBandConfig::new(1).with_capacity(2000, 6)), (-1, PriorityBandConfig::new(-1))]
            .into_iter()
            .collect();
    cfg.registry = RegistryConfig::new(bands, PriorityBandConfig::new(0).with_capacity(0, 8), None);
    cfg.registry.max_requests = 12;
    cfg.controller.default_request_ttl = Duration::from_secs(4);
    cfg.controller.no_endpoint_request_ttl = Duration::from_secs(7);
    cfg.controller.enable_eviction = true;
    cfg
}

// Books the controller's events: an ID may end only once.
fn collect(
    ctl: &mut dyn Controller,
    ended: &mut BTreeMap<ItemId, QueueOutcome>,
    running: &mut Vec<ItemId>,
) -> Result<(), String> {
    for e in ctl.events() {
        if let FlowEvent::Finalized(f) = e {
            if let Some(prev) = ended.insert(f.item.id(), f.outcome) {
                return Err(format!("{:?} ended twice: {prev:?} then {:?}", f.item.id(), f.outcome));
            }
            if f.outcome == QueueOutcome::Dispatched {
                running.push(f.item.id());
            }
        }
    }
    Ok(())
}

/// Runs `ops` (then a shutdown) and checks that every accepted request ended exactly
/// once, no refused one ended, and the queue's count agrees at every step.
fn run(ctl: &mut dyn Controller, clock: &ManualClock, ops: &[Op]) -> Result<(), String> {
    let mut accepted: Vec<ItemId> = Vec::new();
    let mut ended: BTreeMap<ItemId, QueueOutcome> = BTreeMap::new();
    let mut running: Vec<ItemId> = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        match op {
            Op::Enqueue { flow, priority, bytes } => {
                let req =
                    FlowRequest::new(format!("r{n}"), format!("flow-{flow}"), i32::from(*priority), u64::from(*bytes));
                if let Some(id) = ctl.enqueue(req) {
                    accepted.push(id);
                }
            }
            Op::Dispatch { saturation, empty } => {
                ctl.dispatch(PoolSample::new(f64::from(*saturation) / 20.0, usize::from(!*empty)))
            }
            Op::Advance { ms } => clock.advance(Duration::from_millis(u64::from(*ms))),
            Op::Sweep => ctl.sweep(),
            Op::Cancel { pick } => {
                if !accepted.is_empty() {
                    ctl.cancel(accepted[usize::from(*pick) % accepted.len()]);
                }
            }
            Op::Complete { pick } => {
                if !running.is_empty() {
                    let id = running.swap_remove(usize::from(*pick) % running.len());
                    ctl.complete(id);
                }
            }
            Op::SetPriorities { p } => ctl.set_priorities(p.iter().map(|x| i32::from(*x)).collect()),
        }
        collect(ctl, &mut ended, &mut running)?;
        let open = accepted.iter().filter(|id| !ended.contains_key(id)).count();
        if open != ctl.queued() {
            return Err(format!("after {op:?}: {open} accepted and not ended, but {} queued", ctl.queued()));
        }
    }
    ctl.shutdown();
    collect(ctl, &mut ended, &mut running)?;
    let accepted_set: std::collections::BTreeSet<ItemId> = accepted.iter().copied().collect();
    if let Some(stray) = ended.keys().find(|id| !accepted_set.contains(id)) {
        return Err(format!("{stray:?} ended without being accepted"));
    }
    if let Some(lost) = accepted.iter().find(|id| !ended.contains_key(id)) {
        return Err(format!("{lost:?} was accepted and never ended"));
    }
    Ok(())
}

fn real() -> (FlowController, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    (FlowController::new(&small_config(), clock.clone()), clock)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_accepted_request_ends_exactly_once(ops in proptest::collection::vec(op(), 1..120)) {
        let (mut ctl, clock) = real();
        if let Err(e) = run(&mut ctl, &clock, &ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn the_exactly_once_check_catches_a_double_finalizing_controller() {
    // The negative control: the same workload through the real controller passes, and
    // through one that reports a dispatched-then-cancelled request twice fails.
    let ops = vec![
        Op::Enqueue { flow: 0, priority: 0, bytes: 10 },
        Op::Enqueue { flow: 1, priority: 0, bytes: 10 },
        Op::Dispatch { saturation: 0, empty: false },
        Op::Cancel { pick: 0 },
        Op::Cancel { pick: 1 },
    ];
    let (mut ctl, clock) = real();
    assert_eq!(run(&mut ctl, &clock, &ops), Ok(()));
    let (inner, clock) = real();
    let mut broken = DoubleFinalizing { inner, dispatched: Vec::new(), extra: Vec::new() };
    let e = run(&mut broken, &clock, &ops).unwrap_err();
    assert!(e.contains("ended twice"), "{e}");
}

#[cfg(feature = "runtime")]
mod gate {
    use std::sync::atomic::{AtomicU64, Ordering};

    use llmd_scheduler::flowcontrol::gate::{FlowGate, GateOptions, PoolProbe};
    use llmd_scheduler::flowcontrol::policies::saturation::{Concurrency, ConcurrencyConfig};
    use llmd_scheduler::flowcontrol::sample_pool;
    use llmd_scheduler::{Endpoint, Role};

    use super::*;

    #[tokio::test]
    async fn a_burst_waits_for_capacity_and_every_request_gets_through() {
        // The concurrency detector over one endpoint that runs 4 at a time: the pool
        // reads saturated at 4 running, so the rest queue until requests end.
        let running = Arc::new(AtomicU64::new(0));
        let detector = Arc::new(Concurrency::new(ConcurrencyConfig { max_concurrency: 4, ..Default::default() }));
        let probe: PoolProbe = {
            let running = running.clone();
            Arc::new(move || {
                let mut e = Endpoint::new("pod", "10.0.0.1:8000", Role::Both);
                e.inflight.requests = running.load(Ordering::SeqCst);
                sample_pool(detector.as_ref(), &[&e], Duration::ZERO)
            })
        };
        let clock = Arc::new(ManualClock::new());
        let opts = GateOptions { clock: Some(clock), ..Default::default() };
        let gate = FlowGate::start(&FlowControlConfig { enabled: true, ..Default::default() }, probe, opts);
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (g, running) = (gate.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                let permit = g.admit(FlowRequest::new(format!("r{i}"), format!("t{}", i % 3), 0, 100)).await?;
                running.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                // The datastore counts the end before the permit goes.
                running.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
                Ok::<(), llmd_scheduler::flowcontrol::FlowRejection>(())
            }));
        }
        for t in tasks {
            assert_eq!(t.await.ok(), Some(Ok(())));
        }
        let s = gate.stats();
        assert_eq!(s.outcomes.get(&(QueueOutcome::Dispatched, 0)), Some(&20));
        assert_eq!((s.total_len, s.in_flight), (0, 0));
    }
}
