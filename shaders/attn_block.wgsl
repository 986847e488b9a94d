// requires: wide.wgsl attn_lib.wgsl
// The workgroup walk attn_max and attn_sum share (attn_lib.wgsl's QB × KB invocations per
// block of QB queries, head and chunk of keys): which block a workgroup has, and the
// staging of the block's queries and of one step's keys into workgroup memory. Both
// kernels bind q at 1 and k at 2.

@group(0) @binding(1) var<storage, read> q: array<i32>;     // [T, heads·d]
@group(0) @binding(2) var<storage, read> k: array<i32>;     // [T, kv_heads·d]

// The block's queries [QB, d] and one step's keys [attn_step_keys(d), d] (d <= 256): 16
// KiB, WebGPU's guaranteed workgroup storage. Each kernel reuses `ks` for its lanes'
// results after the last step (attn_sum also for a step's weights).
var<workgroup> qs: array<i32, 2048>;
var<workgroup> ks: array<i32, 2048>;

// Workgroup units of a dispatch: blocks of QB queries × heads × chunks.
fn attn_block_units() -> u32 {
    return (p.tokens + QB - 1u) / QB * p.heads * p.chunks;
}

// Unit u's chunk c, head h and its kv head g, first query t0 and last query tlast of the
// block, and first key j0 of the chunk.
struct AttnBlock {
    c: u32,
    h: u32,
    g: u32,
    t0: u32,
    tlast: u32,
    j0: u32,
}

fn attn_block(unit: u32) -> AttnBlock {
    let c = unit % p.chunks;
    let bh = unit / p.chunks;
    let h = bh % p.heads;
    let t0 = (bh / p.heads) * QB;
    return AttnBlock(c, h, h / (p.heads / p.kv_heads), t0, min(t0 + QB, p.tokens) - 1u, c * p.kc);
}

// The block's queries into qs ([QB, d]; rows past the tokens are 0).
fn stage_queries(b: AttnBlock, li: u32) {
    let d = p.head_dim;
    for (var e = li; e < QB * d; e += 64u) {
        let r = e / d;
        var x = 0i;
        if (b.t0 + r < p.tokens) {
            x = q[(b.t0 + r) * p.heads * d + b.h * d + e % d];
        }
        qs[e] = x;
    }
}

// Keys jb .. jb + sk into ks ([sk, d]; keys from j1 on are 0).
fn stage_keys(b: AttnBlock, jb: u32, j1: u32, sk: u32, li: u32) {
    let d = p.head_dim;
    for (var e = li; e < sk * d; e += 64u) {
        let r = e / d;
        var x = 0i;
        if (jb + r < j1) {
            x = k[(jb + r) * p.kv_heads * d + b.g * d + e % d];
        }
        ks[e] = x;
    }
}
