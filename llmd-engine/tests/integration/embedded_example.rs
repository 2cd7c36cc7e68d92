//! Runs `examples/embedded.rs` (the engine with no HTTP and no runtime) so it stays
//! working.

#[path = "../../examples/embedded.rs"]
mod embedded;

#[test]
fn the_embedded_example_runs() {
    embedded::main().unwrap();
}
