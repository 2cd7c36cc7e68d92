//! Plugin types by name: the built-ins under llm-d's type names, plus any a user
//! registers, so configuration files can name them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::plugin::PluginHandle;
use crate::plugins::{filters, pickers, precise, prefix, profiles, scorers};

/// Builds a plugin instance from its name and `parameters`; errors name the parameter.
pub type Factory = Arc<dyn Fn(&str, &Value) -> Result<PluginHandle, String> + Send + Sync>;

/// Plugin types known to the config loader.
#[derive(Clone, Default)]
pub struct PluginRegistry {
    factories: BTreeMap<String, Factory>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

fn handle(name: &str, type_name: &str) -> PluginHandle {
    PluginHandle { name: name.into(), type_name: type_name.into(), ..Default::default() }
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in plugin types.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        r.register("queue-scorer", |n, _| {
            Ok(PluginHandle { scorer: Some(Arc::new(scorers::QueueScorer)), ..handle(n, "queue-scorer") })
        });
        r.register("active-request-scorer", |n, p| {
            Ok(PluginHandle {
                scorer: Some(Arc::new(scorers::ActiveRequestScorer::from_params(p)?)),
                ..handle(n, "active-request-scorer")
            })
        });
        r.register("token-load-scorer", |n, p| {
            Ok(PluginHandle {
                scorer: Some(Arc::new(scorers::TokenLoadScorer::from_params(p)?)),
                ..handle(n, "token-load-scorer")
            })
        });
        r.register("prefill-cost-scorer", |n, p| {
            crate::plugins::Params(p).check(&[])?;
            Ok(PluginHandle { scorer: Some(Arc::new(scorers::PrefillCostScorer)), ..handle(n, "prefill-cost-scorer") })
        });
        r.register("kv-cache-utilization-scorer", |n, _| {
            Ok(PluginHandle {
                scorer: Some(Arc::new(scorers::KvCacheUtilizationScorer)),
                ..handle(n, "kv-cache-utilization-scorer")
            })
        });
        r.register("load-aware-scorer", |n, p| {
            Ok(PluginHandle {
                scorer: Some(Arc::new(scorers::LoadAwareScorer::from_params(p)?)),
                ..handle(n, "load-aware-scorer")
            })
        });
        // Both of the router's strategies (the header token, the session-id binding).
        r.register("session-affinity-scorer", crate::plugins::requestcontrol::session::scorer_handle);
        r.register("lora-affinity-scorer", |n, _| {
            Ok(PluginHandle {
                scorer: Some(Arc::new(scorers::LoraAffinityScorer)),
                ..handle(n, "lora-affinity-scorer")
            })
        });
        r.register("prefix-cache-scorer", |n, p| {
            let s = Arc::new(prefix::PrefixCacheScorer::from_params(p)?);
            Ok(PluginHandle { scorer: Some(s.clone()), observer: Some(s), ..handle(n, "prefix-cache-scorer") })
        });
        // llm-d-router's split of the precise scorer: the producer keeps the index (and
        // takes KV events); a `prefix-cache-scorer` naming it in
        // `prefixMatchInfoProducerName` scores from it (bound in the config loader).
        r.register("precise-prefix-cache-producer", |n, p| {
            let s = Arc::new(precise::PrecisePrefixCacheScorer::from_params(p)?);
            Ok(PluginHandle {
                scorer: Some(s.clone()),
                observer: s.is_speculative().then(|| s.clone() as Arc<dyn crate::plugin::PickObserver>),
                kv_events: Some(s),
                ..handle(n, "precise-prefix-cache-producer")
            })
        });
        r.register("precise-prefix-cache-scorer", |n, p| {
            let s = Arc::new(precise::PrecisePrefixCacheScorer::from_params(p)?);
            Ok(PluginHandle {
                scorer: Some(s.clone()),
                observer: s.is_speculative().then(|| s.clone() as Arc<dyn crate::plugin::PickObserver>),
                kv_events: Some(s),
                ..handle(n, "precise-prefix-cache-scorer")
            })
        });
        r.register("prefill-filter", |n, _| {
            Ok(PluginHandle { filter: Some(Arc::new(filters::PrefillFilter)), ..handle(n, "prefill-filter") })
        });
        r.register("decode-filter", |n, _| {
            Ok(PluginHandle { filter: Some(Arc::new(filters::DecodeFilter)), ..handle(n, "decode-filter") })
        });
        r.register("by-label", |n, p| {
            Ok(PluginHandle { filter: Some(Arc::new(filters::ByLabel::from_params(p)?)), ..handle(n, "by-label") })
        });
        r.register("queue-threshold-filter", |n, p| {
            Ok(PluginHandle {
                filter: Some(Arc::new(filters::QueueThresholdFilter::from_params(p)?)),
                ..handle(n, "queue-threshold-filter")
            })
        });
        r.register("max-score-picker", |n, p| {
            Ok(PluginHandle {
                picker: Some(Arc::new(pickers::MaxScorePicker::from_params(p)?)),
                ..handle(n, "max-score-picker")
            })
        });
        r.register("random-picker", |n, p| {
            pickers::one_endpoint(p)?;
            Ok(PluginHandle { picker: Some(Arc::new(pickers::RandomPicker)), ..handle(n, "random-picker") })
        });
        r.register("weighted-random-picker", |n, p| {
            pickers::one_endpoint(p)?;
            Ok(PluginHandle {
                picker: Some(Arc::new(pickers::WeightedRandomPicker)),
                ..handle(n, "weighted-random-picker")
            })
        });
        r.register("round-robin-picker", |n, p| {
            crate::plugins::Params(p).check(&[])?;
            Ok(PluginHandle {
                picker: Some(Arc::new(pickers::RoundRobinPicker::default())),
                ..handle(n, "round-robin-picker")
            })
        });
        r.register("single-profile-handler", |n, _| {
            Ok(PluginHandle {
                profile_handler: Some(Arc::new(profiles::SingleProfileHandler)),
                ..handle(n, "single-profile-handler")
            })
        });
        r.register("pd-profile-handler", |n, p| {
            profiles::check_pd_params("pd-profile-handler", p)?;
            Ok(PluginHandle {
                profile_handler: Some(Arc::new(profiles::PdProfileHandler::from_params(p)?)),
                ..handle(n, "pd-profile-handler")
            })
        });
        // P/D deciders, bound to the handler that names them by the config loader.
        r.register("prefix-based-pd-decider", |n, p| {
            Ok(PluginHandle {
                decider: Some(Arc::new(profiles::PrefixBasedPdDecider::from_params(p)?)),
                ..handle(n, "prefix-based-pd-decider")
            })
        });
        r.register("data-parallel-profile-handler", |n, p| {
            Ok(PluginHandle {
                profile_handler: Some(Arc::new(profiles::DataParallelProfileHandler::from_params(p)?)),
                ..handle(n, "data-parallel-profile-handler")
            })
        });
        r.register("header-profile-handler", |n, p| {
            Ok(PluginHandle {
                profile_handler: Some(Arc::new(profiles::HeaderProfileHandler::from_params(p)?)),
                ..handle(n, "header-profile-handler")
            })
        });
        // The router's factory ignores its parameters.
        r.register("always-disagg-multimodal-decider", |n, _| {
            Ok(PluginHandle {
                decider: Some(Arc::new(profiles::AlwaysDisaggMultimodalDecider)),
                ..handle(n, "always-disagg-multimodal-decider")
            })
        });
        r.register("always-disagg-pd-decider", |n, _| {
            Ok(PluginHandle {
                decider: Some(Arc::new(profiles::AlwaysDisaggPdDecider)),
                ..handle(n, "always-disagg-pd-decider")
            })
        });
        // The data layer: sources and extractors (wired by dataLayer.sources).
        r.register("metrics-data-source", |n, p| {
            Ok(PluginHandle {
                source: Some(crate::datalayer::SourceKind::metrics_from_params(p)?),
                ..handle(n, "metrics-data-source")
            })
        });
        // The router's source of endpoint add/remove notifications; its extractors
        // (the precise producer) subscribe to each endpoint's KV events, which is what
        // llmd's kv-events-data-source does.
        r.register("endpoint-notification-source", |n, p| {
            crate::plugins::Params(p).check(&[])?;
            Ok(PluginHandle {
                source: Some(crate::datalayer::SourceKind::KvEvents),
                ..handle(n, "endpoint-notification-source")
            })
        });
        r.register("kv-events-data-source", |n, p| {
            crate::plugins::Params(p).check(&[])?;
            Ok(PluginHandle {
                source: Some(crate::datalayer::SourceKind::KvEvents),
                ..handle(n, "kv-events-data-source")
            })
        });
        r.register("core-metrics-extractor", |n, p| {
            Ok(PluginHandle {
                extractor: Some(Arc::new(crate::datalayer::CoreMetricsExtractor::from_params(p)?)),
                ..handle(n, "core-metrics-extractor")
            })
        });
        // GPU telemetry from a DCGM exporter on each endpoint's host (accepts any
        // parameters, as the router's extractor does).
        r.register("dcgm-data-source", |n, p| {
            Ok(PluginHandle {
                source: Some(crate::datalayer::SourceKind::dcgm_from_params(p)?),
                ..handle(n, "dcgm-data-source")
            })
        });
        r.register("dcgm-extractor", |n, _| {
            Ok(PluginHandle {
                extractor: Some(Arc::new(crate::datalayer::DcgmExtractor)),
                ..handle(n, "dcgm-extractor")
            })
        });
        r.register("attribute-scorer", |n, p| {
            Ok(PluginHandle {
                scorer: Some(Arc::new(scorers::AttributeScorer::from_params(p)?)),
                ..handle(n, "attribute-scorer")
            })
        });
        r.register("attribute-filter", |n, p| {
            Ok(PluginHandle {
                filter: Some(Arc::new(filters::AttributeFilter::from_params(p)?)),
                ..handle(n, "attribute-filter")
            })
        });
        // The picker core always keeps llm-d's in-flight counts (prompt tokens released at
        // the first response byte); the producer's output-token estimate is not built.
        r.register("inflight-load-producer", |n, p| {
            let q = crate::plugins::Params(p);
            q.check(&[
                "addEstimatedOutputTokens",
                "outputRatio",
                "maxEstimatedOutputTokens",
                "prefixMatchInfoProducerName",
                "syncCrossReplicaState",
            ])?;
            if q.bool("addEstimatedOutputTokens", false)? {
                return Err("parameter addEstimatedOutputTokens: estimated output tokens are not supported".into());
            }
            Ok(handle(n, "inflight-load-producer"))
        });
        // Endpoint discovery from a file; the data layer runs it (dataLayer.discovery).
        r.register("file-discovery", |n, p| {
            let q = crate::plugins::Params(p);
            q.check(&["path", "watchFile"])?;
            q.string("path")?.ok_or("parameter path is required")?;
            q.bool("watchFile", false)?;
            Ok(handle(n, "file-discovery"))
        });
        // Newer llm-d spells the P/D handler this way (deciders: {prefill: <decider>}).
        r.register("disagg-profile-handler", |n, p| {
            profiles::check_pd_params("disagg-profile-handler", p)?;
            Ok(PluginHandle {
                profile_handler: Some(Arc::new(profiles::PdProfileHandler::from_params(p)?)),
                ..handle(n, "disagg-profile-handler")
            })
        });
        // llm-d plugins whose work happens outside the pick (headers the gateway sets,
        // the approximate prefix producer that llmd's prefix-cache-scorer folds in).
        // Accepted so llm-d files load unchanged.
        for t in ["prefill-header-handler", "disagg-headers-handler", "approx-prefix-cache-producer"] {
            r.register(t, move |n, p| {
                let known: &[&str] = match t {
                    "approx-prefix-cache-producer" => prefix::APPROX_PREFIX_CACHE_PRODUCER_PARAMS,
                    _ => &["prefillProfile", "encodeProfile"],
                };
                crate::plugins::Params(p).check(known)?;
                Ok(handle(n, t))
            });
        }
        crate::plugins::selection::register(&mut r);
        crate::plugins::burst::register(&mut r);
        crate::plugins::topology::register(&mut r);
        crate::plugins::mmcache::register(&mut r);
        crate::plugins::multicluster::register(&mut r);
        crate::plugins::requestcontrol::register(&mut r);
        crate::plugins::latency::register(&mut r);
        crate::parsers::register(&mut r);
        for t in [crate::tokenproducer::TYPE, crate::tokenproducer::LEGACY_TYPE] {
            r.register(t, move |n, p| {
                if t == crate::tokenproducer::LEGACY_TYPE {
                    tracing::warn!(plugin = n, "plugin type 'tokenizer' is deprecated; use 'token-producer' instead");
                }
                Ok(PluginHandle {
                    tokens: Some(Arc::new(crate::tokenproducer::TokenProducer::from_params(p)?)),
                    ..handle(n, t)
                })
            });
        }
        crate::flowcontrol::register(&mut r);
        r
    }

    /// Registers (or replaces) a plugin type.
    pub fn register(
        &mut self,
        type_name: &str,
        factory: impl Fn(&str, &Value) -> Result<PluginHandle, String> + Send + Sync + 'static,
    ) {
        self.factories.insert(type_name.to_string(), Arc::new(factory));
    }

    /// The factory for a type.
    pub fn get(&self, type_name: &str) -> Option<&Factory> {
        self.factories.get(type_name)
    }

    /// Known type names.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }
}
