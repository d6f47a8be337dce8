//! The `sqdf` command line: run an experiment script, pretrain or distill a task's models,
//! evaluate a checkpoint, benchmark, compare methods (`sqdf --help`; the subcommands live in
//! the library's `cli` module).

use clap::Parser;

/// mimalloc: glibc's allocator maps and unmaps every mid-sized tensor, a third of the CPU
/// time of a run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    pin_thread_count();
    keep_freed_memory();
    let cli = sqdf::cli::Cli::parse();
    if let Err(e) = sqdf::cli::dispatch(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Tells mimalloc never to return freed memory to the OS: the same large tensors are
/// allocated every step, and each fresh mapping is zeroed page by page by the kernel
/// (a third of a UNet forward). `MIMALLOC_PURGE_DELAY` set by the user wins.
fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc.h (the crate has no constant for it).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain FFI call; mimalloc stores options atomically, at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// candle asks for its thread count on every matmul and, unless RAYON_NUM_THREADS is set,
/// reads /proc/cpuinfo each time (a third of the toy run's time went there). Setting the
/// variable once, before any thread starts, short-circuits that.
///
/// CANDLE_NUM_THREADS=1 keeps candle's elementwise ops on the calling thread. Otherwise
/// candle runs them on a second pool of spinning threads beside rayon's (which the gemm and
/// this project's kernels use): on 2 cores the two pools' spin-waits took half of a
/// UNet forward when anything else ran, and a little even on an idle machine.
///
/// Ranks started on one machine by mpirun or srun share its cores: each takes its part.
fn pin_thread_count() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let n = (n / sqdf::distributed::ranks_on_this_node()).max(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
