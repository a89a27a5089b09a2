//! iceoryx2 (eclipse): zero-copy publish–subscribe over `[u64]` slices, blocking
//! back-pressure (`RetryUntilDelivered`, safe overflow off), subscriber busy-polling
//! `receive()` (iceoryx2's own benchmarks poll too; blocking needs a separate event
//! service, not measured here).
//!
//! Publish–subscribe is fan-out, not a work queue: N→1 is N publishers on one service;
//! for several consumers each consumer has its own service and producer `i` publishes
//! to service `i mod C` (**static round-robin**, labelled so in the tables). Producers
//! end with an end marker; a consumer stops after one from each of its publishers.

use crate::proto::*;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory as PsFactory;

type Pub = Publisher<ipc::Service, [u64], ()>;
type Sub = Subscriber<ipc::Service, [u64], ()>;

pub fn node() -> Node<ipc::Service> {
    set_log_level(LogLevel::Error);
    NodeBuilder::new()
        .create::<ipc::Service>()
        .expect("iceoryx2 node")
}

pub fn service(
    node: &Node<ipc::Service>,
    name: &str,
    capacity: usize,
    publishers: usize,
) -> PsFactory<ipc::Service, [u64], ()> {
    let name: ServiceName = name.try_into().expect("service name");
    node.service_builder(&name)
        .publish_subscribe::<[u64]>()
        .enable_safe_overflow(false)
        .history_size(0)
        .subscriber_max_buffer_size(capacity)
        .subscriber_max_borrowed_samples(2)
        .max_publishers(publishers)
        .max_subscribers(1)
        .open_or_create()
        .expect("iceoryx2 service")
}

fn publisher(s: &PsFactory<ipc::Service, [u64], ()>, words: usize) -> Pub {
    s.publisher_builder()
        .initial_max_slice_len(words)
        .max_loaned_samples(1)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .expect("iceoryx2 publisher")
}

fn subscriber(s: &PsFactory<ipc::Service, [u64], ()>, capacity: usize) -> Sub {
    s.subscriber_builder()
        .buffer_size(capacity)
        .create()
        .expect("iceoryx2 subscriber")
}

fn publishers_of(spec: &Spec, consumer: u32) -> usize {
    (0..spec.producers)
        .filter(|p| p % spec.consumers == consumer)
        .count()
}

/// Sends until at least one subscriber got the sample: a publisher that has not yet
/// seen its subscriber's connection delivers to nobody (and says so with 0).
fn send_in_place(p: &Pub, words: usize, st: u64) {
    loop {
        let mut s = p.loan_slice_uninit(words).expect("loan");
        for (i, w) in s.payload_mut().iter_mut().enumerate() {
            w.write(if i == 0 {
                st
            } else {
                (i as u64).wrapping_mul(K)
            });
        }
        // SAFETY: every element was written just above.
        if unsafe { s.assume_init() }.send().expect("send") > 0 {
            return;
        }
        std::thread::yield_now();
    }
}

fn send_copy(p: &Pub, src: &[u64]) {
    while p
        .loan_slice_uninit(src.len())
        .expect("loan")
        .write_from_slice(src)
        .send()
        .expect("send")
        == 0
    {
        std::thread::yield_now();
    }
}

pub fn producer(spec: &Spec, ctl: &mut Ctl) -> Report {
    let node = node();
    let c = spec.idx % spec.consumers;
    let svc = service(
        &node,
        &spec.names[c as usize],
        spec.capacity,
        publishers_of(spec, c),
    );
    let words = spec.size / 8;
    let p = publisher(&svc, words);
    let r = if spec.mode == "loan" {
        run_producer(spec, ctl, |st| send_in_place(&p, words, st))
    } else {
        let mut src = Source::new(spec.size);
        run_producer(spec, ctl, |st| {
            src.words[0] = st;
            send_copy(&p, &src.words);
        })
    };
    send_in_place(&p, words, end_stamp(spec.idx));
    keep((p, svc, node));
    r
}

pub fn consumer(spec: &Spec, ctl: &mut Ctl) -> Report {
    let node = node();
    let svc = service(
        &node,
        &spec.names[spec.idx as usize],
        spec.capacity,
        publishers_of(spec, spec.idx),
    );
    let sub = subscriber(&svc, spec.capacity);
    let ends = publishers_of(spec, spec.idx) as u64;
    let (rss_start, _) = rss();
    let mut v = Verifier::new(spec.size, spec.producers as usize);
    ctl.ready_then_wait_go();
    let t_start = now_ns();
    let mut t_last = t_start;
    let mut idle = 0u32;
    let mut fresh = false;
    while v.seen.ends < ends {
        match sub.receive().expect("receive") {
            Some(s) => {
                idle = 0;
                if v.words(s.payload()) == Got::Data {
                    fresh = true;
                } else if fresh {
                    t_last = now_ns();
                    fresh = false;
                }
            }
            None => {
                if fresh {
                    t_last = now_ns();
                    fresh = false;
                }
                idle += 1;
                if idle > 64 {
                    std::thread::yield_now();
                }
            }
        }
    }
    let r = consumer_report(spec, v, rss_start, t_start, t_last);
    keep((sub, svc, node));
    r
}

struct IoxDuplex {
    p: Pub,
    s: Sub,
}

impl Duplex for IoxDuplex {
    fn send(&mut self, w: &[u64]) {
        send_copy(&self.p, w);
    }
    fn recv(&mut self, _spin: bool, f: &mut dyn FnMut(&[u64])) {
        loop {
            if let Some(s) = self.s.receive().expect("receive") {
                f(s.payload());
                return;
            }
            std::hint::spin_loop();
        }
    }
}

pub fn latency(spec: &Spec, ctl: &mut Ctl) -> Report {
    let node = node();
    let (a, b) = if spec.role == "ping" { (0, 1) } else { (1, 0) };
    let out = service(&node, &spec.names[a], spec.capacity, 1);
    let inn = service(&node, &spec.names[b], spec.capacity, 1);
    // Subscribe before publishing so no sample goes to an empty service.
    let s = subscriber(&inn, spec.capacity);
    let p = publisher(&out, spec.size / 8);
    let mut d = IoxDuplex { p, s };
    run_latency(spec, ctl, &mut d)
}
