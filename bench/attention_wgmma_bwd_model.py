# Host model of cuda/attention_wgmma.cu's bwd_kernel (the wgmma backward), written to check its
# index arithmetic without a GPU: byte-addressed shared memory with the 128-byte swizzle (cp.async
# and stmatrix write at the address the kernel computes; wgmma reads apply the swizzle), operands
# read through (start, LBO, SBO) descriptors in the canonical K-major and MN-major SW128 layouts
# (the forms the forward kernels were validated with on the H200), per-thread accumulator and
# A-fragment mappings, the same loops, masks and offsets as the kernel. Values in f64 (no bf16
# rounding), so an indexing mistake shows as an O(1) error against the dense reference; every dK/dV
# entry starts as NaN so a key the kernel never writes fails too. It models what the hardware is
# documented to do; it is not a substitute for the GPU tests. Kept in sync with the kernel by hand.
#
# Usage (Debian: apt-get install python3-numpy): python3 bench/attention_wgmma_bwd_model.py 70x130 1x190
# (each argument NxM; all four block shapes at head dim 64 and 128).
import numpy as np, sys

def swz(a): return a ^ (((a >> 7) & 7) << 4)

class Smem:
    def __init__(self, nbytes): self.m = np.zeros(nbytes // 2)
    def st(self, addr, val): assert addr % 2 == 0; self.m[addr // 2] = val  # generic store: the address as computed
    def ld(self, addr): return self.m[swz(addr) // 2]

def desc(addr, lbo, sbo): return (addr, lbo, sbo)
def desc_kmajor(R, tile, kk): return desc(tile + (kk >> 2) * (R * 128) + (kk & 3) * 32, 16, 1024)
def desc_nmajor(R, tile, kk): return desc(tile + kk * 16 * 128, R * 128, 1024)

def read_kmajor(sm, d, rows):  # (rows x 16): element (r, c)
    s, lbo, sbo = d
    return np.array([[sm.ld(s + (r // 8) * sbo + (r % 8) * 128 + c * 2) for c in range(16)] for r in range(rows)])
def read_mnmajor(sm, d, ext):  # (ext x 16): element (mn, k)
    s, lbo, sbo = d
    return np.array([[sm.ld(s + (mn // 64) * lbo + (mn % 64) * 2 + (k % 8) * 128 + (k // 8) * sbo) for k in range(16)] for mn in range(ext)])

# per-thread accumulator <-> matrix (64 x N) for a warpgroup
def acc_pos(wt, i):
    w, lane = wt // 32, wt % 32; g, t = lane // 4, lane % 4; n, c = i // 4, i % 4
    return 16 * w + g + 8 * (c >> 1), 8 * n + 2 * t + (c & 1)
def acc_to_mat(acc, N):
    Mx = np.zeros((64, N))
    for wt in range(128):
        for i in range(N // 2):
            r, c = acc_pos(wt, i); Mx[r, c] = acc[wt][i]
    return Mx
def mat_to_acc(Mx, N):
    return [[Mx[acc_pos(wt, i)] for i in range(N // 2)] for wt in range(128)]

# wgmma: d (64 x N) = A (64 x 16) B (16 x N) + (acc ? d : 0); operands as matrices
def wgmma(dacc, A, B, accumulate, N):
    cur = acc_to_mat(dacc, N) if accumulate else np.zeros((64, N))
    return mat_to_acc(cur + A @ B, N)
# A from registers: a[wt][kk][j] = (lo, hi) pairs per to_a
def regs_to_A(a, kk):
    A = np.zeros((64, 16))
    for wt in range(128):
        w, lane = wt // 32, wt % 32; g, t = lane // 4, lane % 4
        for j in range(4):
            r = 16 * w + g + 8 * (j & 1); c = 2 * t + 8 * (j >> 1)
            A[r, c], A[r, c + 1] = a[wt][kk][j]
    return A
def to_a(s, kk): return [(s[8 * kk + 0], s[8 * kk + 1]), (s[8 * kk + 2], s[8 * kk + 3]), (s[8 * kk + 4], s[8 * kk + 5]), (s[8 * kk + 6], s[8 * kk + 7])]

def load_tile(sm, R, D, s, g_mat, row0, nrows):
    CPR = D // 8
    for c in range(R * CPR):
        r, ch = c // CPR, c % CPR
        ok = row0 + r < nrows
        dst = s + (ch >> 3) * (R * 128) + r * 128 + (((ch & 7) ^ (r & 7)) << 4)
        for e in range(8):  # 16 bytes, zero-filled past the end
            sm.m[dst // 2 + e] = g_mat[row0 + r, ch * 8 + e] if ok else 0.0

def bwd_block(D, BRQ, NWG, q, k, v, go, lse, delta, dq_acc, dk, dv, N, M, scale, bx):
    BC, RG = 64 * NWG, BRQ // 64; CP = NWG // RG; DW = D // CP
    assert RG * CP == NWG and DW % 64 == 0
    KB, QB, SB = BC * D * 2, BRQ * D * 2, BRQ * BC * 2
    sK = 0; sV = sK + KB; sQ = sV + KB; sdO = sQ + 2 * QB; sdS = sdO + 2 * QB
    sm = Smem(sdS + SB)
    Ls = np.zeros(2 * BRQ); Ds = np.zeros(2 * BRQ)
    sl2 = scale * np.log2(np.e)
    k0, nq = bx * BC, (N + BRQ - 1) // BRQ
    def rowstats(i, buf):
        for tid in range(BRQ):
            r = i * BRQ + tid
            Ls[buf * BRQ + tid] = lse[r] * np.log2(np.e) if r < N else np.inf
            Ds[buf * BRQ + tid] = delta[r] if r < N else 0.0
    load_tile(sm, BC, D, sK, k, k0, M); load_tile(sm, BC, D, sV, v, k0, M)
    load_tile(sm, BRQ, D, sQ, q, 0, N); load_tile(sm, BRQ, D, sdO, go, 0, N)
    rowstats(0, 0)
    dka = [[[0.0] * (D // 2) for _ in range(128)] for _ in range(NWG)]
    dva = [[[0.0] * (D // 2) for _ in range(128)] for _ in range(NWG)]
    for i in range(nq):
        buf = i & 1
        if i + 1 < nq:
            load_tile(sm, BRQ, D, sQ + (buf ^ 1) * QB, q, (i + 1) * BRQ, N)
            load_tile(sm, BRQ, D, sdO + (buf ^ 1) * QB, go, (i + 1) * BRQ, N)
            rowstats(i + 1, buf ^ 1)
        qt, ot = sQ + buf * QB, sdO + buf * QB
        Lb, Db = Ls[buf * BRQ:(buf + 1) * BRQ], Ds[buf * BRQ:(buf + 1) * BRQ]
        frag = {}
        for wg in range(NWG):
            kw, vw = sK + wg * 64 * 128, sV + wg * 64 * 128
            dsw = sdS + wg * (BRQ * 128)
            st = dpt = None
            for kk in range(D // 16):
                st = wgmma(st, read_kmajor(sm, desc_kmajor(BC, kw, kk), 64), read_kmajor(sm, desc_kmajor(BRQ, qt, kk), BRQ).T, kk > 0, BRQ)
            for kk in range(D // 16):
                dpt = wgmma(dpt, read_kmajor(sm, desc_kmajor(BC, vw, kk), 64), read_kmajor(sm, desc_kmajor(BRQ, ot, kk), BRQ).T, kk > 0, BRQ)
            pa, da = [], []
            for wt in range(128):
                lane = wt % 32; g, t = lane // 4, lane % 4
                kc = (wt >> 5) * 16 + g; krow = wg * 64 + kc
                ktail = k0 + BC > M; kval = (k0 + krow < M, k0 + krow + 8 < M)
                s_, d_ = st[wt], dpt[wt]
                for n in range(BRQ // 8):
                    for c in range(4):
                        col = 8 * n + 2 * t + (c & 1)
                        p = 2.0 ** (s_[4 * n + c] * sl2 - Lb[col])
                        s_[4 * n + c] = p
                        d_[4 * n + c] = p * (d_[4 * n + c] - Db[col])
                if ktail:
                    for n in range(BRQ // 8):
                        for c in range(4):
                            if not kval[c >> 1]: s_[4 * n + c] = d_[4 * n + c] = 0.0
                pa.append([to_a(s_, kk) for kk in range(BRQ // 16)])
                da.append([to_a(d_, kk) for kk in range(BRQ // 16)])
            for kk in range(BRQ // 16):
                dva[wg] = wgmma(dva[wg], regs_to_A(pa, kk), read_mnmajor(sm, desc_nmajor(BRQ, ot, kk), D).T, True, D)
            # stmatrix.x4.trans per warp and k16 step: lane 8 j + c gives the address of row c of
            # transposed matrix j; that row holds column c of fragment j, i.e. the values of the
            # lanes 4 r + c // 2 (r = 0..7), half c % 2 of their register j.
            for w in range(4):
                for kk in range(BRQ // 16):
                    for lane in range(32):
                        j, c = lane >> 3, lane & 7
                        kc = w * 16 + (lane >> 2)  # as the kernel: only kc >> 3 = 2 w matters
                        r, ch = 16 * kk + 8 * (j >> 1) + c, (kc >> 3) + (j & 1)
                        addr = dsw + r * 128 + ((ch ^ (r & 7)) << 4)
                        for rr in range(8):
                            src = da[w * 32 + 4 * rr + c // 2][kk][j]
                            sm.st(addr + rr * 2, src[c % 2])
            for kk in range(BRQ // 16):
                dka[wg] = wgmma(dka[wg], regs_to_A(da, kk), read_mnmajor(sm, desc_nmajor(BRQ, qt, kk), D).T, True, D)
        # barrier: all dS in place
        for wg in range(NWG):
            rg, part = wg % RG, wg // RG
            dsa, kb = sdS + rg * 64 * 128, sK + part * (DW // 64) * (BC * 128)
            dqa = None
            for kk in range(BC // 16):
                dqa = wgmma(dqa, read_kmajor(sm, desc_kmajor(BRQ, dsa, kk), 64), read_mnmajor(sm, desc_nmajor(BC, kb, kk), DW).T, kk > 0, DW)
            for wt in range(128):
                lane = wt % 32; g, t = lane // 4, lane % 4
                for h in range(2):
                    row = i * BRQ + rg * 64 + (wt >> 5) * 16 + g + 8 * h
                    if row < N:
                        for n in range(DW // 8):
                            col = part * DW + n * 8 + 2 * t
                            dq_acc[row, col] += dqa[wt][4 * n + 2 * h]
                            dq_acc[row, col + 1] += dqa[wt][4 * n + 2 * h + 1]
    for wg in range(NWG):
        for wt in range(128):
            lane = wt % 32; g, t = lane // 4, lane % 4
            krow = wg * 64 + (wt >> 5) * 16 + g
            for h in range(2):
                key = k0 + krow + 8 * h
                if key < M:
                    for n in range(D // 8):
                        for e in range(2):
                            dk[key, n * 8 + 2 * t + e] = dka[wg][wt][4 * n + 2 * h + e] * scale
                            dv[key, n * 8 + 2 * t + e] = dva[wg][wt][4 * n + 2 * h + e]

def run(D, BRQ, NWG, N, M, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((N, D)) * 1.5; k = rng.standard_normal((M, D)); v = rng.standard_normal((M, D))
    go = rng.standard_normal((N, D)); glse = rng.standard_normal(N)
    scale = 1 / np.sqrt(D)
    S = q @ k.T * scale; mx = S.max(1, keepdims=True); P = np.exp(S - mx); l = P.sum(1, keepdims=True); P /= l
    lse = (mx + np.log(l))[:, 0]; o = P @ v
    delta = (go * o).sum(1) - glse
    dP = go @ v.T; dS = P * (dP - delta[:, None])
    ref_dq, ref_dk, ref_dv = scale * dS @ k, scale * dS.T @ q, P.T @ go
    dq_acc = np.zeros((N, D)); dk = np.full((M, D), np.nan); dv = np.full((M, D), np.nan)
    BC = 64 * NWG
    for bx in range((M + BC - 1) // BC):
        bwd_block(D, BRQ, NWG, q, k, v, go, lse, delta, dq_acc, dk, dv, N, M, scale, bx)
    dq = dq_acc * scale
    errs = [np.abs(a - b).max() / np.abs(b).max() for a, b in ((dq, ref_dq), (dk, ref_dk), (dv, ref_dv))]
    ok = all(e < 1e-9 for e in errs)
    print(f"D={D} BRQ={BRQ} NWG={NWG} N={N} M={M}: rel max err dq {errs[0]:.2e} dk {errs[1]:.2e} dv {errs[2]:.2e} {'OK' if ok else 'FAIL'}", flush=True)
    return ok

cfgs = [(64, 128, 2), (64, 64, 1), (128, 64, 2), (128, 64, 1)]
shapes = [(int(a), int(b)) for a, b in (s.split('x') for s in sys.argv[1:])] or [(70, 130)]
allok = True
for D, BRQ, NWG in cfgs:
    for N, M in shapes:
        allok &= run(D, BRQ, NWG, N, M, N * 7 + M)
print("ALL OK" if allok else "SOME FAILED")
