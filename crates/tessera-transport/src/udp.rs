//! The UDP socket under quinn, with GSO batches kept under the UDP limit.
//!
//! quinn 0.11 asks the socket how many datagrams one send may carry and then
//! hands it up to that many segments of the path's current MTU, without
//! capping the total. A GSO send is one UDP datagram to the kernel until it
//! is segmented, so its payload must fit in 65,507 bytes (IPv4): once MTU
//! discovery climbs past ~6,500 bytes (loopback, jumbo frames), a batch of
//! ten is refused whole and reads as heavy loss. [`GsoCappedSocket`] splits
//! such a batch into sends that fit, which lets discovery go up to 64 KiB
//! with segmentation offload still on for ordinary 1,500-byte paths.
//!
//! The aggregator's socket also caps how many segments quinn may batch
//! ([`GsoCappedSocket::with_batch_limit`]). quinn assembles a batch in a
//! buffer each connection keeps, at the largest size it reached, for the
//! connection's life: ten segments of a 65,000-byte MTU are 635 KiB per
//! connection, 6.2 GiB for 10,000 members (docs/benchmarks.md, "Load: the
//! aggregator daemon at 10,000 members"). Batches of at most one send's
//! worth keep that buffer under 64 KiB; at a 65,000-byte MTU nothing is
//! lost, since such a batch is split into single datagrams anyway.
//!
//! A member's socket caps how many datagrams one receive call takes
//! ([`GsoCappedSocket::with_recv_batch_limit`]). quinn gives each endpoint
//! a receive buffer of 32 slots, each as large as a GRO batch of the
//! largest datagram (4 MiB at a 65,000-byte bound, 133 MB in all, mapped
//! but untouched until written): every slot a receive fills stays resident
//! for the endpoint's life, up to 32 × 64 KiB = 2 MiB once a burst of large
//! datagrams has arrived. Harmless for one member, it is 20 GiB for 10,000
//! members in one process (docs/benchmarks.md, "Load: the aggregator
//! daemon at 10,000 members"); one datagram (or one GRO batch) per receive
//! keeps it to the first slot's 64 KiB, at one system call per datagram.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Largest UDP payload of one send over IPv4 (65,535 minus the IP and UDP
/// headers); IPv6 allows 20 bytes more, so this bound is safe for both.
pub(crate) const MAX_SEND_PAYLOAD: usize = 65_507;

/// Delegates to quinn's runtime socket, splitting oversize GSO batches.
pub(crate) struct GsoCappedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Most segments quinn may put in one batch (see the module docs).
    max_segments: usize,
    /// Most datagrams (or GRO batches) one receive call may take.
    max_recv_batch: usize,
}

impl GsoCappedSocket {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>) -> Self {
        Self { inner, max_segments: usize::MAX, max_recv_batch: usize::MAX }
    }

    /// Receive calls fill at most `slots` of quinn's receive slots (at
    /// least one), so no more of its receive buffer becomes resident (see
    /// the module docs).
    pub(crate) fn with_recv_batch_limit(mut self, slots: usize) -> Self {
        self.max_recv_batch = slots.max(1);
        self
    }

    /// Batches of at most as many datagrams of `max_datagram` bytes as
    /// one send carries (at least one), so that no connection's batch
    /// buffer grows past [`MAX_SEND_PAYLOAD`]. On a path whose MTU stays
    /// far below `max_datagram` this gives up part of the batching.
    pub(crate) fn with_batch_limit(mut self, max_datagram: usize) -> Self {
        self.max_segments = batch_segments(max_datagram);
        self
    }
}

/// Segments of `max_datagram` bytes that fit in one send, at least one.
fn batch_segments(max_datagram: usize) -> usize {
    (MAX_SEND_PAYLOAD / max_datagram.max(1)).max(1)
}

impl fmt::Debug for GsoCappedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GsoCappedSocket")
            .field("inner", &self.inner)
            .field("max_segments", &self.max_segments)
            .field("max_recv_batch", &self.max_recv_batch)
            .finish()
    }
}

/// The byte ranges of `transmit` to send one by one: each a whole number of
/// segments and at most [`MAX_SEND_PAYLOAD`] bytes (a single segment larger
/// than that is passed on as it is, for the kernel to refuse).
fn split_points(len: usize, segment: usize) -> impl Iterator<Item = (usize, usize)> {
    let per_send = (MAX_SEND_PAYLOAD / segment.max(1)).max(1) * segment.max(1);
    (0..len).step_by(per_send).map(move |start| (start, (start + per_send).min(len)))
}

impl AsyncUdpSocket for GsoCappedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(segment) = transmit.segment_size else {
            return self.inner.try_send(transmit);
        };
        if transmit.contents.len() <= MAX_SEND_PAYLOAD {
            return self.inner.try_send(transmit);
        }
        for (i, (start, end)) in split_points(transmit.contents.len(), segment).enumerate() {
            let contents = &transmit.contents[start..end];
            let part = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents,
                segment_size: (contents.len() > segment).then_some(segment),
                src_ip: transmit.src_ip,
            };
            match self.inner.try_send(&part) {
                Ok(()) => {}
                // Nothing sent yet: quinn waits for writability and retries
                // the whole batch.
                Err(e) if i == 0 => return Err(e),
                // Part of the batch is out; retrying would resend it. The
                // rest counts as lost and QUIC's recovery resends it.
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = bufs.len().min(meta.len()).min(self.max_recv_batch);
        self.inner.poll_recv(cx, &mut bufs[..n], &mut meta[..n])
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.max_segments)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_on_segment_boundaries_under_the_udp_limit() {
        // Ten 9,000-byte segments (the last one short): sends of 7 and 3.
        let parts: Vec<_> = split_points(9 * 9_000 + 500, 9_000).collect();
        assert_eq!(parts, vec![(0, 63_000), (63_000, 81_500)]);
        for (s, e) in &parts {
            assert!(e - s <= MAX_SEND_PAYLOAD);
            assert_eq!(s % 9_000, 0);
        }
        // 64 KiB-class datagrams go one per send.
        let parts: Vec<_> = split_points(3 * 65_000, 65_000).collect();
        assert_eq!(parts, vec![(0, 65_000), (65_000, 130_000), (130_000, 195_000)]);
    }

    /// The aggregator's batches hold at most one send's worth: one 64
    /// KiB-class datagram, seven of 9,000 bytes, 45 of 1,452; never none.
    #[test]
    fn a_batch_limit_keeps_a_batch_within_one_send() {
        assert_eq!(batch_segments(65_000), 1);
        assert_eq!(batch_segments(9_000), 7);
        assert_eq!(batch_segments(1_452), 45);
        assert_eq!(batch_segments(100_000), 1);
        assert_eq!(batch_segments(0), MAX_SEND_PAYLOAD);
        for mtu in [1_200, 1_452, 9_000, 65_000] {
            assert!(batch_segments(mtu) * mtu <= MAX_SEND_PAYLOAD);
        }
    }

    /// Datagrams one receive call takes from `socket` when three are queued
    /// and quinn offers four slots.
    async fn taken_per_receive(limit: Option<usize>) -> usize {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let addr = rx.local_addr().unwrap();
        let runtime = quinn::default_runtime().unwrap();
        let mut socket = GsoCappedSocket::new(runtime.wrap_udp_socket(rx).unwrap());
        if let Some(l) = limit {
            socket = socket.with_recv_batch_limit(l);
        }
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..3u8 {
            tx.send_to(&[i; 100], addr).unwrap();
        }
        let mut storage = [[0u8; 2048]; 4];
        let mut bufs: Vec<IoSliceMut<'_>> = storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = [RecvMeta::default(); 4];
        std::future::poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta)).await.unwrap()
    }

    /// A member's socket fills one of quinn's receive slots per call, so
    /// the rest of quinn's receive buffer is never touched.
    #[tokio::test]
    async fn a_recv_batch_limit_fills_one_slot_per_receive() {
        assert_eq!(taken_per_receive(Some(1)).await, 1);
        assert_eq!(taken_per_receive(Some(0)).await, 1, "at least one");
        // Without the limit, Linux's recvmmsg takes all three at once.
        if cfg!(target_os = "linux") {
            assert_eq!(taken_per_receive(None).await, 3);
        }
    }
}
