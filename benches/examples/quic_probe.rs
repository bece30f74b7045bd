//! One-shot QUIC-vs-TCP loopback transfer with the path statistics, for
//! tuning `QuicTuning` (issue #2). The criterion bench `transport` is the
//! figure of record; this prints what explains it.
//!
//! `cargo run --release -p tessera-benches --example quic_probe -- [MiB] [runs]`
//!
//! Environment overrides of `QuicTuning` (both ends): `TESSERA_MTU`
//! (`mtu_upper_bound`), `TESSERA_INITIAL_MTU`, `TESSERA_STREAM_WINDOW`,
//! `TESSERA_CONN_WINDOW`, `TESSERA_SEND_WINDOW` (bytes).

use std::time::Instant;

use tessera_core::{HEADER_LEN, PROTOCOL_VERSION};
use tessera_transport::QuicTuning;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FRAME: usize = 4 << 20;

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn tuning() -> QuicTuning {
    let mut t = QuicTuning::default();
    if let Some(v) = env("TESSERA_MTU") {
        t.mtu_upper_bound = v;
    }
    if let Some(v) = env("TESSERA_INITIAL_MTU") {
        t.initial_mtu = v;
    }
    if let Some(v) = env("TESSERA_STREAM_WINDOW") {
        t.stream_receive_window = v;
    }
    if let Some(v) = env("TESSERA_CONN_WINDOW") {
        t.receive_window = v;
    }
    if let Some(v) = env("TESSERA_SEND_WINDOW") {
        t.send_window = v;
    }
    t
}

fn frame() -> Vec<u8> {
    let mut f = vec![0x5a; FRAME];
    f[0] = PROTOCOL_VERSION;
    f[1..HEADER_LEN].copy_from_slice(&((FRAME - HEADER_LEN) as u32).to_le_bytes());
    f
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let total = args.first().copied().unwrap_or(256) << 20;
    let runs = args.get(1).copied().unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let tuning = tuning();
    println!("{tuning:?}");
    rt.block_on(async {
        let (mut client, mut server, _dir) = tessera_benches::quic_pair_with(tuning).await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        let (mut tx, mut rx) = (a.expect("connect"), b.expect("accept").0);
        for run in 0..runs {
            let frames: Vec<Vec<u8>> = (0..total / FRAME).map(|_| frame()).collect();
            let t = Instant::now();
            let send = async {
                for f in frames {
                    client.send(f).await.expect("send");
                }
            };
            let recv = async {
                let mut got = 0;
                while got < total {
                    got += server.recv().await.expect("recv").expect("frame").len() + HEADER_LEN;
                }
            };
            tokio::join!(send, recv);
            let quic = total as f64 / t.elapsed().as_secs_f64() / 1e6;
            let f = frame();
            let t = Instant::now();
            let send = async {
                for _ in 0..total / FRAME {
                    tx.write_all(&f).await.expect("write");
                }
            };
            let recv = async {
                let mut buf = vec![0u8; FRAME];
                let mut got = 0;
                while got < total {
                    got += rx.read(&mut buf).await.expect("read");
                }
            };
            tokio::join!(send, recv);
            let tcp = total as f64 / t.elapsed().as_secs_f64() / 1e6;
            let s = client.quic_stats().expect("quic");
            println!(
                "run {run}: QUIC {quic:.0} MB/s, TCP {tcp:.0} MB/s, ratio {:.2}; mtu {}, cwnd {}, lost {}, congestion events {}, rtt {:?}, udp tx datagrams {}",
                quic / tcp,
                s.path.current_mtu,
                s.path.cwnd,
                s.path.lost_packets,
                s.path.congestion_events,
                s.path.rtt,
                s.udp_tx.datagrams,
            );
        }
    });
}
