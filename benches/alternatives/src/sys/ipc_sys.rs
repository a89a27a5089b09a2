//! ipc-channel (servo): `IpcBytesSender::send(&[u8])` / `IpcBytesReceiver::recv() ->
//! Vec<u8>`, over Unix sockets on Linux. Endpoints reach a child through a one-shot
//! server it opens and names on stdout (`IPC <name>`).

use crate::proto::*;
use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender, IpcOneShotServer};
use ipc_channel::TryRecvError;
use serde::{Deserialize, Serialize};

/// What the orchestrator hands a child.
#[derive(Serialize, Deserialize)]
pub struct Ends {
    pub tx: Option<IpcBytesSender>,
    pub rx: Option<IpcBytesReceiver>,
}

fn receive_ends(ctl: &mut Ctl) -> Ends {
    let (server, name) = IpcOneShotServer::<Ends>::new().expect("one-shot server");
    ctl.say(&format!("IPC {name}"));
    let (_, ends) = server.accept().expect("accept");
    ends
}

pub fn producer(spec: &Spec, ctl: &mut Ctl) -> Report {
    let tx = receive_ends(ctl).tx.expect("sender");
    let mut src = Source::new(spec.size);
    let r = run_producer(spec, ctl, |st| tx.send(src.stamped(st)).expect("send"));
    // Dropped at exit; with every sender gone the receiver disconnects.
    keep(tx);
    r
}

pub fn consumer(spec: &Spec, ctl: &mut Ctl) -> Report {
    let rx = receive_ends(ctl).rx.expect("receiver");
    let (rss_start, _) = rss();
    let mut v = Verifier::new(spec.size, spec.producers as usize);
    ctl.ready_then_wait_go();
    let t_start = now_ns();
    let mut t_last = t_start;
    let mut fresh = false;
    loop {
        let m = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Empty) => {
                t_last = now_ns();
                fresh = false;
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            }
            Err(_) => break,
        };
        v.bytes(&m);
        fresh = true;
    }
    if fresh {
        t_last = now_ns();
    }
    let r = consumer_report(spec, v, rss_start, t_start, t_last);
    keep(rx);
    r
}

struct IpcDuplex {
    tx: IpcBytesSender,
    rx: IpcBytesReceiver,
}

impl Duplex for IpcDuplex {
    fn send(&mut self, w: &[u64]) {
        self.tx.send(bytemuck::cast_slice(w)).expect("send");
    }
    fn recv(&mut self, spin: bool, f: &mut dyn FnMut(&[u64])) {
        let m = if spin {
            loop {
                match self.rx.try_recv() {
                    Ok(m) => break m,
                    Err(TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(e) => panic!("try_recv: {e}"),
                }
            }
        } else {
            self.rx.recv().expect("recv")
        };
        with_words(&m, |w| f(w));
    }
}

pub fn latency(spec: &Spec, ctl: &mut Ctl) -> Report {
    let e = receive_ends(ctl);
    let mut d = IpcDuplex {
        tx: e.tx.expect("sender"),
        rx: e.rx.expect("receiver"),
    };
    run_latency(spec, ctl, &mut d)
}
