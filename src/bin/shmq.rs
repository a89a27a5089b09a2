//! `shmq`: list, inspect, clean up and benchmark shmq queues on this host.

use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: shmq <command>

commands:
  list                     the queues on this host: capacity, depth, participants, payload memory
  inspect NAME [--json]    header, ring positions, slots by state, participants, recovery lease
  gc [--force]             remove queues no live process uses (dry run unless --force)
  bench [--size BYTES] [--count N] [--capacity N]
                           a quick cross-process throughput check
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("list") => list(),
        Some("inspect") => inspect(&args[1..]),
        Some("gc") => gc(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("__bench-recv") => bench_recv(&args[1..]),
        Some("-h") | Some("--help") | Some("help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmq: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < U.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[u])
    }
}

fn list() -> Result<(), String> {
    let qs = shmq::info::list().map_err(|e| e.to_string())?;
    if qs.is_empty() {
        println!("no queues in /dev/shm");
        return Ok(());
    }
    println!(
        "{:<32} {:>8} {:>7} {:>9} {:>9} {:>5} {:>11}",
        "NAME", "CAPACITY", "DEPTH", "SENDERS", "RECEIVERS", "DEAD", "PAYLOAD"
    );
    for (name, info) in qs {
        match info {
            Ok(i) => println!(
                "{:<32} {:>8} {:>7} {:>9} {:>9} {:>5} {:>11}{}",
                name,
                i.capacity,
                i.depth,
                i.alive("sender"),
                i.alive("receiver"),
                i.dead(),
                bytes(i.payload_bytes),
                if i.problems.is_empty() {
                    ""
                } else {
                    "  CORRUPT (shmq inspect says more)"
                }
            ),
            Err(e) => println!("{name:<32} (unreadable: {e})"),
        }
    }
    Ok(())
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn inspect(args: &[String]) -> Result<(), String> {
    let name = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .ok_or("inspect needs a queue name (`shmq list` shows the queues)")?;
    let json = args.iter().any(|a| a == "--json");
    let i = shmq::info::inspect(name).map_err(|e| e.to_string())?;
    let [free, loaned, held, orphan] = i.slot_states;
    if json {
        let parts: Vec<String> = i
            .participants
            .iter()
            .map(|p| {
                format!(
                    "{{\"index\":{},\"role\":{},\"pid\":{},\"alive\":{},\"sent\":{},\"loaned\":{},\"held\":{}}}",
                    p.index,
                    json_str(p.role),
                    p.pid,
                    p.alive,
                    p.sent,
                    p.loaned,
                    p.held
                )
            })
            .collect();
        println!(
            "{{\"name\":{},\"capacity\":{},\"slots\":{},\"max_participants\":{},\"max_message_size\":{},\
\"max_payload_bytes\":{},\"delivery\":{},\"max_deliveries\":{},\"head\":{},\"tail\":{},\"depth\":{},\
\"slot_states\":{{\"free\":{free},\"loaned\":{loaned},\"held\":{held},\"orphan\":{orphan}}},\
\"payload_bytes\":{},\"header_bytes\":{},\"lease_holder\":{},\"recoveries\":{},\"orphaned\":{},\
\"dropped\":{},\"dead_letters\":{},\"discarded\":{},\"participants\":[{}],\"problems\":[{}]}}",
            json_str(&i.name),
            i.capacity,
            i.slots,
            i.max_participants,
            i.max_message_size,
            i.max_payload_bytes,
            json_str(if i.at_most_once { "at-most-once" } else { "at-least-once" }),
            i.max_deliveries,
            i.head,
            i.tail,
            i.depth,
            i.payload_bytes,
            i.header_bytes,
            i.lease_holder.map_or("null".to_string(), |l| l.to_string()),
            i.recoveries,
            i.orphaned,
            i.dropped,
            i.dead_letters,
            i.discarded,
            parts.join(","),
            i.problems
                .iter()
                .map(|p| json_str(p))
                .collect::<Vec<_>>()
                .join(",")
        );
        return Ok(());
    }
    println!("queue        {}", i.name);
    if !i.problems.is_empty() {
        println!("CORRUPT      {} problem(s):", i.problems.len());
        for p in &i.problems {
            println!("  - {p}");
        }
        println!("  what to do: {}", shmq::info::RECOVER_ADVICE);
    }
    println!(
        "capacity     {} (depth {}; ring head {} tail {})",
        i.capacity, i.depth, i.head, i.tail
    );
    println!(
        "delivery     {}; at most {} deliveries, then set aside",
        if i.at_most_once {
            "at-most-once"
        } else {
            "at-least-once"
        },
        i.max_deliveries
    );
    println!(
        "messages     up to {} each; payload memory {} of {} allowed; header {}",
        bytes(i.max_message_size),
        bytes(i.payload_bytes),
        bytes(i.max_payload_bytes),
        bytes(i.header_bytes)
    );
    println!(
        "slots        {free} free, {loaned} loaned, {held} held, {orphan} orphan (of {})",
        i.slots
    );
    println!(
        "recovery     lease {}; {} recovered, {} redeliverable, {} dropped, {} set aside, {} discarded",
        i.lease_holder
            .map_or("free".to_string(), |l| format!("held by #{l}")),
        i.recoveries,
        i.orphaned,
        i.dropped,
        i.dead_letters,
        i.discarded
    );
    println!(
        "participants ({} of {} records)",
        i.participants.len(),
        i.max_participants
    );
    println!(
        "  {:>5} {:<9} {:>8} {:<6} {:>10} {:>7} {:>5}",
        "#", "ROLE", "PID", "ALIVE", "SENT", "LOANED", "HELD"
    );
    for p in &i.participants {
        println!(
            "  {:>5} {:<9} {:>8} {:<6} {:>10} {:>7} {:>5}",
            p.index,
            p.role,
            p.pid,
            if p.alive { "yes" } else { "DEAD" },
            p.sent,
            p.loaned,
            p.held
        );
    }
    Ok(())
}

fn gc(args: &[String]) -> Result<(), String> {
    let force = args.iter().any(|a| a == "--force");
    let report = if force {
        shmq::gc()
    } else {
        shmq::gc_dry_run()
    }
    .map_err(|e| e.to_string())?;
    let names = &report.removed;
    for (n, why) in &report.skipped {
        println!("skipped {n}: {why}");
    }
    if names.is_empty() && report.skipped.is_empty() {
        println!("nothing to remove: every queue has a live process attached");
    }
    for n in names {
        println!("{} {n}", if force { "removed" } else { "would remove" });
    }
    if !force && !names.is_empty() {
        println!("(dry run: pass --force to remove them)");
    }
    Ok(())
}

fn flag(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number")),
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    let size = flag(args, "--size", 65536)? as usize;
    let count = flag(args, "--count", 20_000)?;
    let capacity = flag(args, "--capacity", 64)? as usize;
    let (tx, rx) = shmq::Builder::new()
        .capacity(capacity)
        .max_message_size((size as u64).max(1))
        .create()
        .map_err(|e| e.to_string())?;
    drop(rx);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .args([
            "__bench-recv",
            tx.name(),
            &count.to_string(),
            &size.to_string(),
        ])
        .spawn()
        .map_err(|e| format!("cannot start the receiver process: {e}"))?;
    // Wait for the receiver to attach.
    let t0 = Instant::now();
    while shmq::info::inspect(tx.name())
        .map(|i| i.alive("receiver"))
        .unwrap_or(0)
        == 0
    {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the receiver process did not attach".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Copy API on both sides: the sender copies a buffer in, the receiver reads every
    // byte (a checksum), so the figure includes moving the data, not just handing it over.
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    for i in 0..count {
        if size >= 8 {
            buf[..8].copy_from_slice(&i.to_le_bytes());
        }
        tx.send(&buf).map_err(|e| e.to_string())?;
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    if !status.success() {
        return Err("the receiver process failed".into());
    }
    println!(
        "{count} messages of {} across processes in {secs:.3} s: {:.0} msg/s, {:.2} GB/s",
        bytes(size as u64),
        count as f64 / secs,
        count as f64 * size as f64 / secs / 1e9
    );
    Ok(())
}

fn bench_recv(args: &[String]) -> Result<(), String> {
    let [name, count, size] = args else {
        return Err("internal: __bench-recv NAME COUNT SIZE".into());
    };
    let count: u64 = count.parse().map_err(|_| "bad count")?;
    let size: usize = size.parse().map_err(|_| "bad size")?;
    let rx = shmq::Receiver::open(name).map_err(|e| e.to_string())?;
    for i in 0..count {
        let m = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        let (words, tail) = m.split_at(m.len() / 8 * 8);
        let words: &[u64] = shmq::typed::bytemuck::cast_slice(words);
        let sum = words.iter().fold(0u64, |a, &w| a.wrapping_add(w))
            + tail.iter().map(|&b| b as u64).sum::<u64>();
        let want = if size >= 8 { i } else { 0 };
        if m.len() != size || sum != want {
            return Err(format!("message {i} arrived wrong"));
        }
    }
    Ok(())
}
