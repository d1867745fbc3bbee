//! The TC half of the mark fast path: copies the [`MarkMeta`] the XDP program left in front
//! of an APNs packet into `skb->mark`, so netfilter and policy routing can exempt APNs (from a
//! transparent proxy, say) on gateways where the redirect fast path does not fit (NAT).

use apns_common::fastpath::{MarkMeta, MARK_META_MAGIC};
use aya_ebpf::programs::TcContext;

/// TCX_NEXT / TC_ACT_UNSPEC: let the next program or the default action decide.
const TC_NEXT: i32 = -1;

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    // SAFETY: `skb` points to the __sk_buff the kernel passed to the program.
    let (meta, data) = unsafe {
        (
            (*ctx.skb.skb).data_meta as usize,
            (*ctx.skb.skb).data as usize,
        )
    };
    if meta + size_of::<MarkMeta>() > data {
        return TC_NEXT;
    }
    // SAFETY: bounds checked above; metadata is 4-byte aligned.
    let found = unsafe { *(meta as *const MarkMeta) };
    if found.magic == MARK_META_MAGIC {
        // SAFETY: as above.
        let current = unsafe { (*ctx.skb.skb).mark };
        ctx.set_mark((current & !found.mask) | (found.mark & found.mask));
    }
    TC_NEXT
}
