// bpf-linker is the linker for the bpf target; make cargo rebuild this crate
// when it changes (as aya-template does), so a linker upgrade is picked up.
fn main() {
    let bpf_linker = which::which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().expect("utf-8 path"));
}
