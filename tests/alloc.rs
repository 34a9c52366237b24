//! Steady-state inference allocates nothing: after a warm-up run has grown the workspace and the
//! kernels' per-thread scratch, further runs of the same shape must not touch the allocator.
//! (A test binary of its own, because it installs a counting global allocator.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use mobilenet_serve::engine::model::Nhwc;
use mobilenet_serve::engine::pool::{LoadOptions, ModelPool};
use mobilenet_serve::engine::team::Team;
use mobilenet_serve::engine::workspace::Workspace;
use mobilenet_serve::kernels::int8::Int8Kernels;
use mobilenet_serve::kernels::{KernelSet, Tier};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator; only counts allocations on the way.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_inference_allocates_nothing_on_every_tier() {
    let names = [
        "mobilenet_v1_0.25_128",
        "mobilenet_v1_1.0_224",
        "mobilenet_v1_0.25_128_quant",
        "mobilenet_v1_1.0_224_quant",
    ];
    let teams = [Team::single(), Team::new(2, "alloc", || {}).unwrap()];
    // Every tier's kernels on every model, and the other integer kernel sets this CPU runs (the
    // emulated dot products on an AVX2 CPU without VNNI) on the 8-bit models.
    let int8_names: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.ends_with("_quant"))
        .collect();
    let tiers: Vec<KernelSet> = Tier::supported()
        .into_iter()
        .map(|t| KernelSet::for_tier(t).unwrap())
        .collect();
    let others = Int8Kernels::supported()
        .into_iter()
        .filter(|k| tiers.iter().all(|t| t.int8.name != k.name));
    let sets = tiers
        .iter()
        .map(|t| (*t, names.to_vec()))
        .chain(others.map(|int8| {
            let kernels = KernelSet {
                int8,
                ..KernelSet::scalar()
            };
            (kernels, int8_names.clone())
        }));
    for (kernels, names) in sets {
        let tier = format!("{} (int8: {})", kernels.tier, kernels.int8.name);
        let opts = LoadOptions {
            variants: Some(names.iter().map(|s| s.to_string()).collect()),
            resolution: None,
            kernels,
        };
        let pool = ModelPool::load(&common::zoo_dir(), &opts).unwrap();
        assert_eq!(pool.variants().len(), names.len());
        for v in pool.variants() {
            let r = v.spec.resolution;
            // 4: two threads run the per-image prefix on two images each.
            for batch in [1, 3, 4] {
                let input = common::random_vec(batch * v.input_len(), 5, 1.0);
                for team in &teams {
                    let (mut ws, mut out) = (Workspace::new(), Vec::new());
                    // One warm-up run: part i of a layer always runs on thread i, so each
                    // thread's kernel scratch has met its largest size after one run.
                    v.model
                        .run_on(team, &mut ws, Nhwc::new(&input, batch, r, r), &mut out)
                        .unwrap();
                    let before = ALLOCATIONS.load(Ordering::Relaxed);
                    for _ in 0..3 {
                        v.model
                            .run_on(team, &mut ws, Nhwc::new(&input, batch, r, r), &mut out)
                            .unwrap();
                    }
                    let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
                    assert_eq!(
                        allocated,
                        0,
                        "{} on {tier}, batch {batch}, {} threads",
                        v.spec.name,
                        team.threads()
                    );
                }
            }
        }
    }
}
