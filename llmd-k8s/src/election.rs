//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! does it for llm-d's EPP (`--ha-enable-leader-election`, Lease `epp-<ns>-<pool>.llm-d.ai`,
//! released on shutdown).
//!
//! One step ([`LeaderElector::try_acquire_or_renew`]) reads the Lease and writes it
//! back with this replica as holder when it is free, expired or already ours; the write
//! carries the `resourceVersion` read, so of two replicas writing at once the API server
//! lets one through and answers the other 409. Expiry is judged as client-go judges it:
//! by how long *this* replica has seen the record unchanged on its own clock, never by
//! comparing the `renewTime` another machine wrote with ours (clocks skew).
//!
//! [`run`] repeats the step every retry period and reports leadership on a
//! `tokio::sync::watch` channel. A leader that cannot renew within the renew deadline
//! steps down (reports `false`) before the lease runs out elsewhere, and tries again to
//! acquire; its datastore stays warm meanwhile, as llm-d's `haPopulateNonLeaderDatastore`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use llmd_scheduler::Clock;
use tokio::sync::watch;

use crate::error::{K8sError, Result};

pub use crate::manifests::lease_name;

/// Lease timings; the defaults are controller-runtime's (15 s lease, 10 s renew
/// deadline, 2 s retry), which llm-d's EPP keeps.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// The Lease's namespace (the pool's).
    pub namespace: String,
    /// The Lease's name (see [`lease_name`]).
    pub name: String,
    /// This replica's identity (pod name plus a random suffix, as controller-runtime).
    pub identity: String,
    /// How long a holder's claim lasts without renewal, as other replicas see it.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// Time between attempts.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// llm-d's Lease for `pool` in `namespace`, with controller-runtime's timings.
    pub fn for_pool(namespace: &str, pool: &str, identity: impl Into<String>) -> Self {
        ElectionConfig {
            namespace: namespace.to_string(),
            name: lease_name(namespace, pool),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Refuses timings under which two replicas could both believe they lead: the renew
    /// deadline must be shorter than the lease, and the retry period shorter than the
    /// deadline (client-go's checks).
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| K8sError::Lease { name: format!("{}/{}", self.namespace, self.name), reason };
        if self.identity.is_empty() {
            return Err(bad("the identity is empty".into()));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(bad(format!(
                "renew deadline {:?} must be shorter than the lease duration {:?}",
                self.renew_deadline, self.lease_duration
            )));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(bad(format!(
                "retry period {:?} must be shorter than the renew deadline {:?}",
                self.retry_period, self.renew_deadline
            )));
        }
        Ok(())
    }
}

/// The record as last read, and when (on our clock) it was first seen in that state.
#[derive(Debug)]
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Duration,
}

/// Reads and writes the Lease; one [`LeaderElector::try_acquire_or_renew`] per step.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: ElectionConfig,
    clock: Arc<dyn Clock>,
    observed: Option<Observed>,
    leading: bool,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector").field("cfg", &self.cfg).field("leading", &self.leading).finish_non_exhaustive()
    }
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl LeaderElector {
    /// An elector on `client`'s API server; `clock` measures how long a record stays
    /// unchanged.
    pub fn new(client: kube::Client, cfg: ElectionConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        cfg.validate()?;
        let api = Api::namespaced(client, &cfg.namespace);
        Ok(LeaderElector { api, cfg, clock, observed: None, leading: false })
    }

    /// The configuration.
    pub fn config(&self) -> &ElectionConfig {
        &self.cfg
    }

    /// Whether the last step left this replica the holder.
    pub fn is_leader(&self) -> bool {
        self.leading
    }

    fn err(&self, what: &str, source: kube::Error) -> K8sError {
        K8sError::Api {
            what: format!("{what} lease {}/{}", self.cfg.namespace, self.cfg.name),
            source: Box::new(source),
        }
    }

    fn record(&self, prev: Option<&LeaseSpec>, now: MicroTime) -> LeaseSpec {
        let ours = prev.and_then(|p| p.holder_identity.as_deref()) == Some(self.cfg.identity.as_str());
        let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(secs(self.cfg.lease_duration)),
            acquire_time: if ours { prev.and_then(|p| p.acquire_time.clone()) } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(if ours || prev.is_none() { transitions } else { transitions + 1 }),
            ..LeaseSpec::default()
        }
    }

    /// One step: take the Lease if it is missing, free (no holder) or unrenewed for its
    /// duration as we have watched it, renew it if ours. Returns whether we lead now.
    /// A write that loses a race (409) means another replica moved first: not leading,
    /// no error.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let current = match self.api.get_opt(&self.cfg.name).await {
            Ok(l) => l,
            Err(e) => {
                self.leading = false;
                return Err(self.err("reading", e));
            }
        };
        // The record is seen when the read returns (a slow read must not count toward
        // its expiry), as client-go stamps it.
        let now = self.clock.now();
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.record(None, now_micro())),
            };
            // A 409: another replica created it between our read and our write.
            let created = self.api.create(&PostParams::default(), &lease).await;
            return self.settle("creating", created, Some(None), now);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        self.observe(holder.clone(), spec.renew_time.clone(), now);
        let ours = holder.as_deref() == Some(self.cfg.identity.as_str());
        if holder.is_some() && !ours {
            // The holder's own duration, as written, decides; ours if it wrote none.
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(self.cfg.lease_duration);
            let seen_at = self.observed.as_ref().map(|o| o.at).unwrap_or(now);
            if now < seen_at + duration {
                self.leading = false;
                return Ok(false);
            }
        }
        lease.spec = Some(self.record(Some(&spec), now_micro()));
        let replaced = self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await;
        self.settle("writing", replaced, (!ours).then_some(holder), now)
    }

    /// The outcome of our write: leading when it went through, following when another
    /// replica wrote first (409), an error otherwise. `took_from` is the previous holder
    /// when this write acquires rather than renews.
    fn settle(
        &mut self,
        what: &str,
        written: std::result::Result<Lease, kube::Error>,
        took_from: Option<Option<String>>,
        now: Duration,
    ) -> Result<bool> {
        match written {
            Ok(written) => {
                let renew = written.spec.and_then(|s| s.renew_time);
                self.observe(Some(self.cfg.identity.clone()), renew, now);
                if let Some(previous) = took_from {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, ?previous, "acquired the lease");
                }
                self.leading = true;
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.leading = false;
                Ok(false)
            }
            Err(e) => {
                self.leading = false;
                Err(self.err(what, e))
            }
        }
    }

    fn observe(&mut self, holder: Option<String>, renew: Option<MicroTime>, now: Duration) {
        let same = self.observed.as_ref().is_some_and(|o| o.holder == holder && o.renew == renew);
        if !same {
            self.observed = Some(Observed { holder, renew, at: now });
        }
    }

    /// Gives the Lease up if we hold it, so a follower takes over at its next step
    /// instead of waiting out the lease (client-go's `ReleaseOnCancel`): the holder is
    /// cleared and the duration set to one second.
    pub async fn release(&mut self) -> Result<()> {
        if !self.leading {
            return Ok(());
        }
        self.leading = false;
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await.map_err(|e| self.err("reading", e))? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        let now = now_micro();
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        lease.spec = Some(spec);
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => {
                tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "released the lease");
                Ok(())
            }
            // Someone else wrote it meanwhile: it is not ours to clear.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(self.err("releasing", e)),
        }
    }
}

/// Runs `elector` until `stop` resolves, publishing leadership on `leading`; then
/// releases the Lease if held. Each call to the API server is cut after the retry
/// period, so a hung connection cannot keep a leader past its renew deadline.
pub async fn run(
    mut elector: LeaderElector,
    leading: watch::Sender<bool>,
    stop: impl std::future::Future<Output = ()>,
) {
    let retry = elector.cfg.retry_period;
    let deadline = elector.cfg.renew_deadline;
    let clock = elector.clock.clone();
    // When the last successful renewal happened, on our clock.
    let mut renewed: Option<Duration> = None;
    tokio::pin!(stop);
    loop {
        // A leader's step may not outlast its renew deadline: it steps down on time
        // even when the API server hangs.
        let budget = match renewed {
            Some(at) => (at + deadline).saturating_sub(clock.now()).min(retry),
            None => retry,
        };
        let step = tokio::time::timeout(budget, elector.try_acquire_or_renew());
        let outcome = tokio::select! {
            o = step => o,
            _ = &mut stop => break,
        };
        let now = clock.now();
        let lead = match outcome {
            Ok(Ok(true)) => {
                renewed = Some(now);
                true
            }
            Ok(Ok(false)) => {
                renewed = None;
                false
            }
            // A failed or slow step keeps a leader leading until its renew deadline.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leader election step failed");
                renewed.is_some_and(|at| now < at + deadline)
            }
            Err(_) => {
                tracing::warn!(lease = %elector.cfg.name, "leader election step timed out");
                renewed.is_some_and(|at| now < at + deadline)
            }
        };
        if !lead && *leading.borrow() {
            tracing::warn!(lease = %elector.cfg.name, identity = %elector.cfg.identity, "lost leadership; now a follower");
            renewed = None;
        }
        leading.send_if_modified(|l| std::mem::replace(l, lead) != lead);
        // A leader whose renewals fail wakes at its deadline at the latest.
        let pause = match renewed {
            Some(at) if lead => (at + deadline).saturating_sub(clock.now()).min(retry),
            _ => retry,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut stop => break,
        }
    }
    leading.send_if_modified(|l| std::mem::replace(l, false));
    // Still ours on the server if the last step won: give it up.
    if renewed.is_some() {
        elector.leading = true;
    }
    match tokio::time::timeout(retry, elector.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease failed; it expires on its own"),
        Err(_) => tracing::warn!("releasing the lease timed out; it expires on its own"),
    }
}
