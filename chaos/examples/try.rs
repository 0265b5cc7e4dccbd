use specie_chaos::{run, RunOptions, Scenario};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let s = Scenario::load(std::path::Path::new(&args[1])).unwrap();
    let seed: u64 = args.get(2).map_or(1, |a| a.parse().unwrap());
    let planted: Option<&'static str> = args.get(3).map(|a| &*Box::leak(a.clone().into_boxed_str()));
    let r = run(&s, &RunOptions { seed, planted });
    println!("ok={} ops={} skipped={} sim={}ms wall={:.2}s speed={:.1} digest={}", r.ok(), r.ops, r.skipped, r.sim_ms, r.wall_s, r.speed(), r.history_digest());
    for (n, f) in &r.invariants { println!("  {n}: {f}"); }
    println!("  violation: {:?}", r.violation);
    println!("  faults: {:?}", r.faults_injected);
    println!("  net: {:?} restarts {:?}", r.net, r.restarts);
    println!("  phases: {:?}", r.phases);
}
