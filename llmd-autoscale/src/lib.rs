//! Workload- and SLO-aware autoscaling.
//!
//! **Not built yet.** This crate will hold, as runtime-free code: a queueing-model
//! optimizer that turns TTFT/ITL targets, load and accelerator cost into desired replicas
//! per model variant, stabilization windows, scale-to-zero, and a trace simulator.
//!
//! Nothing is exported yet.
