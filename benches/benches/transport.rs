//! Moving a 256 MiB update from a member to the aggregator over loopback:
//! QUIC with mutual TLS (tessera-transport, 4 MiB frames) side by side with a
//! plain TCP loopback copy of the same bytes. Target: QUIC ≥ 0.5 × TCP.
//! Default `QuicTuning` on both ends; `examples/quic_probe.rs` prints the
//! path statistics (MTU, loss, congestion window) behind the figure.
//!
//! `cargo bench -p tessera-benches --bench transport`

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tessera_core::{HEADER_LEN, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOTAL: usize = 256 << 20;
const FRAME: usize = 4 << 20;

fn frame() -> Vec<u8> {
    let mut f = vec![0x5a; FRAME];
    f[0] = PROTOCOL_VERSION;
    f[1..HEADER_LEN].copy_from_slice(&((FRAME - HEADER_LEN) as u32).to_le_bytes());
    f
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut g = c.benchmark_group("update_256MiB");
    g.sample_size(10).measurement_time(Duration::from_secs(30)).throughput(Throughput::Bytes(TOTAL as u64));

    let (mut client, mut server, _dir) = rt.block_on(tessera_benches::quic_pair());
    let f = frame();
    g.bench_function("quic_mtls", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    // The frames exist before the clock starts, as an encoded update would.
                    let frames: Vec<Vec<u8>> = (0..TOTAL / FRAME).map(|_| f.clone()).collect();
                    let start = Instant::now();
                    let send = async {
                        for frame in frames {
                            client.send(frame).await.unwrap();
                        }
                    };
                    let recv = async {
                        let mut got = 0;
                        while got < TOTAL {
                            got += server.recv().await.unwrap().unwrap().len() + HEADER_LEN;
                        }
                    };
                    tokio::join!(send, recv);
                    elapsed += start.elapsed();
                }
                elapsed
            })
        })
    });

    let (mut tx, mut rx) = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    });
    g.bench_function("tcp_plain", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let send = async {
                        for _ in 0..TOTAL / FRAME {
                            tx.write_all(&f).await.unwrap();
                        }
                    };
                    let recv = async {
                        let mut buf = vec![0u8; FRAME];
                        let mut got = 0;
                        while got < TOTAL {
                            got += rx.read(&mut buf).await.unwrap();
                        }
                    };
                    tokio::join!(send, recv);
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
