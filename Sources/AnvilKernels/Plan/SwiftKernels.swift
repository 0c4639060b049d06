import AnvilCore
import COneDNN
import Foundation

/// Swift kernels for what oneDNN lacks or does in a thread-count-dependent order.
/// Each works on raw arena memory and has a fixed summation order, so results do
/// not depend on how many threads run them.
enum SwiftKernels {
    /// A pointer handed to worker threads that write disjoint ranges.
    struct UnsafeSendable<T>: @unchecked Sendable { let pointer: UnsafePointer<T>; init(_ p: UnsafePointer<T>) { pointer = p } }

    /// `count` elements at `target`, each a copy of `value` (one element's bytes): zeros
    /// by memset, 1/2/4/8-byte values by typed stores, other sizes by doubling copies.
    static func fill(_ target: UnsafeMutableRawPointer, count: Int, with value: [UInt8]) {
        let size = value.count
        guard count > 0, size > 0 else { return }
        if value.allSatisfy({ $0 == 0 }) { memset(target, 0, count * size); return }
        value.withUnsafeBytes { v in
            switch size {
            case 1: memset(target, Int32(v[0]), count)
            case 2: target.bindMemory(to: UInt16.self, capacity: count).update(repeating: v.loadUnaligned(as: UInt16.self), count: count)
            case 4: target.bindMemory(to: UInt32.self, capacity: count).update(repeating: v.loadUnaligned(as: UInt32.self), count: count)
            case 8: target.bindMemory(to: UInt64.self, capacity: count).update(repeating: v.loadUnaligned(as: UInt64.self), count: count)
            default:
                target.copyMemory(from: v.baseAddress!, byteCount: size)
                var filled = 1
                while filled < count {
                    let n = min(filled, count - filled)
                    (target + filled * size).copyMemory(from: target, byteCount: n * size)
                    filled += n
                }
            }
        }
    }

    /// Mean over the spatial dimensions of `[N, C, spatial…]` into plain `[N, C, 1…]`.
    /// Each channel (or channel block) is summed by one thread in a fixed order, so the
    /// result does not depend on the thread count; large inputs are split between threads.
    static func globalAveragePool(_ x: UnsafePointer<Float>, layout: Layout, n: Int, c: Int, spatial: Int, into y: UnsafeMutablePointer<Float>) {
        let scale = 1 / Float(spatial)
        let source = UnsafeSendable(x), target = UnsafeSendable(UnsafePointer(y))
        /// Runs `units` independent pieces of work, split between threads when the input is large.
        func split(_ units: Int, _ work: @Sendable (Range<Int>) -> Void) {
            Parallel.ranges(units, parts: Parallel.parts(forElements: n * c * spatial), work)
        }
        switch layout {
        case .plain:
            split(n * c) { rows in
                let y = UnsafeMutablePointer(mutating: target.pointer)
                for i in rows { y[i] = sum(source.pointer + i * spatial, count: spatial) * scale }
            }
        case .channelsLast:
            for b in 0..<n {
                let out = y + b * c
                for j in 0..<c { out[j] = 0 }
                for s in 0..<spatial {
                    let row = x + (b * spatial + s) * c
                    for j in 0..<c { out[j] += row[j] }
                }
                for j in 0..<c { out[j] *= scale }
            }
        case .blocked8, .blocked16, .preferred, .opaque:
            let block = layout.channelBlock ?? 16
            let blocks = (c + block - 1) / block
            split(n * blocks) { units in
                let y = UnsafeMutablePointer(mutating: target.pointer)
                for unit in units {
                    let b = unit / blocks, cb = unit % blocks
                    let base = source.pointer + unit * spatial * block, first = b * c + cb * block, valid = min(block, c - cb * block)
                    if block == 16 {
                        let total = blockSum(base, SIMD16<Float>.self, spatial: spatial) * scale
                        for j in 0..<valid { y[first + j] = total[j] }
                    } else if block == 8 {
                        let total = blockSum(base, SIMD8<Float>.self, spatial: spatial) * scale
                        for j in 0..<valid { y[first + j] = total[j] }
                    } else {
                        for j in 0..<valid {
                            var total: Float = 0
                            for s in 0..<spatial { total += base[s * block + j] }
                            y[first + j] = total * scale
                        }
                    }
                }
            }
        }
    }

    /// The sum of `count` contiguous floats, in an order that depends only on `count`.
    static func sum(_ row: UnsafePointer<Float>, count: Int) -> Float {
        var a = SIMD16<Float>(repeating: 0), b = a
        var s = 0
        while s + 32 <= count {
            a += UnsafeRawPointer(row + s).loadUnaligned(as: SIMD16<Float>.self)
            b += UnsafeRawPointer(row + s + 16).loadUnaligned(as: SIMD16<Float>.self)
            s += 32
        }
        var total = (a + b).sum()
        while s < count { total += row[s]; s += 1 }
        return total
    }

    /// The per-lane sum of `spatial` consecutive vectors (one channel block at every
    /// position), four accumulators wide.
    static func blockSum<V: SIMD>(_ base: UnsafePointer<Float>, _: V.Type, spatial: Int) -> V where V.Scalar == Float {
        var a0 = V(repeating: 0), a1 = a0, a2 = a0, a3 = a0
        let raw = UnsafeRawPointer(base), step = MemoryLayout<V>.stride
        var s = 0
        while s + 4 <= spatial {
            a0 += raw.loadUnaligned(fromByteOffset: s * step, as: V.self)
            a1 += raw.loadUnaligned(fromByteOffset: (s + 1) * step, as: V.self)
            a2 += raw.loadUnaligned(fromByteOffset: (s + 2) * step, as: V.self)
            a3 += raw.loadUnaligned(fromByteOffset: (s + 3) * step, as: V.self)
            s += 4
        }
        while s < spatial { a0 += raw.loadUnaligned(fromByteOffset: s * step, as: V.self); s += 1 }
        return (a0 + a1) + (a2 + a3)
    }

    /// Channels-last patches `[rows][width][kh][kw][channels]` (one kh×kw patch per input
    /// pixel) placed into the channels-last image `[rows][kh][width][kw][channels]`: each
    /// patch row is kw·channels contiguous floats at both ends.
    static func placePatches(_ x: UnsafePointer<Float>, rows: Int, width: Int, kh: Int, kw: Int, channels: Int, into y: UnsafeMutablePointer<Float>) {
        let run = kw * channels
        let source = UnsafeSendable(x), target = UnsafeSendable(UnsafePointer(y))
        Parallel.ranges(rows, parts: Parallel.parts(forElements: rows * width * kh * run)) { range in
            let y = UnsafeMutablePointer(mutating: target.pointer)
            for r in range {
                for i in 0..<kh {
                    for col in 0..<width {
                        let from = source.pointer + ((r * width + col) * kh + i) * run, to = y + ((r * kh + i) * width + col) * run
                        for k in 0..<run { to[k] = from[k] }
                    }
                }
            }
        }
    }

    /// DynamicQuantizeLinear as the reference computes it, in Float: the range [min(0, x),
    /// max(0, x)] (NaN ignored), scale = range / 255, zero point round(−min / scale) in
    /// [0, 255] (0 when undefined, for an infinite range), and each value round(x / scale)
    /// + zero point saturated to uint8 (the zero point for NaN, and everywhere when the
    /// scale is 0). Returns the scale and zero point.
    static func dynamicQuantize(_ x: UnsafePointer<Float>, count: Int, into y: UnsafeMutablePointer<UInt8>) -> (Float, UInt8) {
        typealias V = SIMD16<Float>
        let parts = Parallel.parts(forElements: count)
        let source = UnsafeSendable(x)
        // The range, per part (min and max do not depend on the order), in stack memory: no
        // allocation during a planned run.
        let (low, high) = withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * parts) { ranges -> (Float, Float) in
            let bounds = UnsafeSendable(UnsafePointer(ranges.baseAddress!))
            Parallel.forEach(parts) { part in
                let lo = count * part / parts, hi = count * (part + 1) / parts
                var low = V(repeating: 0), high = V(repeating: 0)
                var i = lo
                while i + 16 <= hi {
                    let v = UnsafeRawPointer(source.pointer + i).loadUnaligned(as: V.self)
                    // Comparisons with NaN are false: NaN lanes leave the bounds alone.
                    low = low.replacing(with: v, where: v .< low)
                    high = high.replacing(with: v, where: v .> high)
                    i += 16
                }
                var l = low.min(), h = high.max()
                while i < hi {
                    let v = source.pointer[i]
                    if v < l { l = v }
                    if v > h { h = v }
                    i += 1
                }
                let out = UnsafeMutablePointer(mutating: bounds.pointer)
                out[2 * part] = l
                out[2 * part + 1] = h
            }
            var low: Float = 0, high: Float = 0
            for part in 0..<parts { low = min(low, ranges[2 * part]); high = max(high, ranges[2 * part + 1]) }
            return (low, high)
        }
        let scale = (high - low) / 255
        let unclamped = (0 - low / scale).rounded(.toNearestOrEven)
        let zero: Float = scale == 0 || unclamped.isNaN ? 0 : min(max(unclamped, 0), 255)
        let target = UnsafeSendable(UnsafePointer(y))
        Parallel.ranges(count, parts: parts) { range in
            let y = UnsafeMutablePointer(mutating: target.pointer)
            if scale == 0 {
                for i in range { y[i] = UInt8(zero) }
                return
            }
            // Rounding to nearest even by adding and subtracting 1.5 · 2^23 (exact below 2^22,
            // beyond which the value saturates anyway), and the byte read from the float's low
            // mantissa bits: no conversion that could trap, so the loop vectorizes.
            let magic: Float = 12_582_912, zeroByte = UInt8(zero)
            for i in range {
                let q = source.pointer[i] / scale
                let c = q < -1e6 ? -1e6 : (q > 1e6 ? 1e6 : q)
                var r = (c + magic) - magic + zero
                r = r < 0 ? 0 : (r > 255 ? 255 : r)
                let byte = UInt8(truncatingIfNeeded: (r + magic).bitPattern)
                y[i] = q != q ? zeroByte : byte
            }
        }
        return (scale, UInt8(zero))
    }

    /// A per-channel operation of `channelAffine`.
    enum ChannelOperation { case multiply, add }

    /// y = x · p[c] or x + p[c] for every element of channel c of an `[N, C, spatial…]`
    /// tensor in `layout` (in place allowed). `p` holds one value per channel, padded
    /// to a whole block for blocked layouts.
    static func channelAffine(_ x: UnsafePointer<Float>, layout: Layout, n: Int, c: Int, spatial: Int, _ op: ChannelOperation,
                              _ p: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>) {
        let multiply = op == .multiply
        /// `count` elements of x against one parameter each (`stride` 0) or a run of parameters (`stride` 1).
        @Sendable func row(_ from: UnsafePointer<Float>, _ to: UnsafeMutablePointer<Float>, _ count: Int, _ q: UnsafePointer<Float>, varying: Bool) {
            var i = 0
            let splat = SIMD16<Float>(repeating: q[0])
            while i + 16 <= count {
                let v = UnsafeRawPointer(from + i).loadUnaligned(as: SIMD16<Float>.self)
                let w = varying ? UnsafeRawPointer(q + i).loadUnaligned(as: SIMD16<Float>.self) : splat
                UnsafeMutableRawPointer(to + i).storeBytes(of: multiply ? v * w : v + w, as: SIMD16<Float>.self)
                i += 16
            }
            while i < count { to[i] = multiply ? from[i] * (varying ? q[i] : q[0]) : from[i] + (varying ? q[i] : q[0]); i += 1 }
        }
        // Rows of elements that share one parameter (plain) or read a run of them (the others).
        let rows: Int, rowLength: Int
        let start: @Sendable (Int) -> (offset: Int, parameter: Int)
        switch layout {
        case .plain:
            (rows, rowLength) = (n * c, spatial)
            start = { i in (i * spatial, i % c) }
        case .channelsLast:
            (rows, rowLength) = (n * spatial, c)
            start = { i in (i * c, 0) }
        case .blocked8, .blocked16, .preferred, .opaque:
            let block = layout.channelBlock ?? 16, blocks = (c + block - 1) / block
            (rows, rowLength) = (n * blocks * spatial, block)
            start = { i in (i * block, (i / spatial) % blocks * block) }
        }
        let varying = layout != .plain
        let parts = Parallel.parts(forElements: rows * rowLength)
        let source = UnsafeSendable(x), target = UnsafeSendable(UnsafePointer(y)), parameters = UnsafeSendable(p)
        Parallel.ranges(rows, parts: parts) { range in
            for i in range {
                let (offset, q) = start(i)
                row(source.pointer + offset, UnsafeMutablePointer(mutating: target.pointer) + offset, rowLength, parameters.pointer + q, varying: varying)
            }
        }
    }

    /// Softmax over the middle axis of a plain `[outer, axis, inner]` tensor (in place
    /// allowed), the inner positions split between two threads when there are many.
    /// `scratch` holds 2 × inner floats.
    static func softmax(_ x: UnsafePointer<Float>, outer: Int, axis: Int, inner: Int, into y: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
        let parts = inner >= 4096 ? 2 : 1
        let chunk = (inner + parts - 1) / parts
        nonisolated(unsafe) let (src, dst, tmp) = (x, y, scratch)
        Parallel.forEach(parts) { part in
            let lo = part * chunk, hi = min(inner, lo + chunk)
            softmaxColumns(src, outer: outer, axis: axis, inner: inner, columns: lo..<hi, into: dst, maxima: tmp, sums: tmp + inner)
        }
    }

    /// Softmax of the columns `columns` (positions along the inner dimension), 16 columns at a time.
    static func softmaxColumns(_ x: UnsafePointer<Float>, outer: Int, axis: Int, inner: Int, columns: Range<Int>,
                               into y: UnsafeMutablePointer<Float>, maxima: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Float>) {
        guard !columns.isEmpty else { return }
        typealias V = SIMD16<Float>
        let vectorEnd = columns.lowerBound + (columns.count / 16) * 16
        func load(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }
        func store(_ v: V, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self) }
        for o in 0..<outer {
            let src = x + o * axis * inner, dst = y + o * axis * inner
            var i = columns.lowerBound
            while i < vectorEnd {
                var m = load(src + i)
                for a in 1..<max(axis, 1) {
                    let v = load(src + a * inner + i)
                    // NaN wins, as in the scalar path below.
                    m = m.replacing(with: v, where: (v .> m) .| (v .!= v))
                }
                var sum = V(repeating: 0)
                for a in 0..<axis {
                    let e = exp(load(src + a * inner + i) - m)
                    store(e, dst + a * inner + i)
                    sum += e
                }
                let scale = 1 / sum
                for a in 0..<axis { store(load(dst + a * inner + i) * scale, dst + a * inner + i) }
                i += 16
            }
            guard vectorEnd < columns.upperBound else { continue }
            let tail = vectorEnd..<columns.upperBound
            for i in tail { maxima[i] = src[i] }
            for a in 1..<max(axis, 1) {
                let row = src + a * inner
                for i in tail where row[i] > maxima[i] || row[i].isNaN { maxima[i] = row[i] }
            }
            for i in tail { sums[i] = 0 }
            for a in 0..<axis {
                let row = src + a * inner, out = dst + a * inner
                for i in tail {
                    let e = Foundation.exp(row[i] - maxima[i])
                    out[i] = e
                    sums[i] += e
                }
            }
            for a in 0..<axis {
                let out = dst + a * inner
                for i in tail { out[i] /= sums[i] }
            }
        }
    }

    /// e^x on 16 lanes (Cephes' single-precision polynomial after reducing by powers of
    /// two; within a few ulp of expf up to x = 88.37, where softmax's arguments, never
    /// positive, always are): NaN stays NaN, x < -87.34 gives zero. Written with
    /// `replacing` and bit casts only: the stdlib's SIMD `rounded`, `pointwiseMin` and
    /// integer conversions compile to scalar loops, ten times slower.
    @inline(__always)
    static func exp(_ x: SIMD16<Float>) -> SIMD16<Float> {
        typealias V = SIMD16<Float>
        let lo = V(repeating: -87.336_54), hi = V(repeating: 88.376_26)
        let c = x.replacing(with: lo, where: x .< lo).replacing(with: hi, where: x .> hi)
        // Adding 1.5 * 2^23 rounds to an integer n held in the low mantissa bits.
        let magic = V(repeating: 12_582_912)
        let t = c * 1.442_695_04 + magic
        let n = t - magic
        let r = c - n * 0.693_359_375 + n * 2.121_944_4e-4
        var p = V(repeating: 1.987_569_15e-4)
        p = p * r + 1.398_199_95e-3
        p = p * r + 8.333_451_9e-3
        p = p * r + 4.166_579_59e-2
        p = p * r + 1.666_666_55e-1
        p = p * r + 5.000_000_12e-1
        p = p * r * r + r + 1
        // 2^n through the exponent bits (n is within [-126, 127] after clamping).
        let k = unsafeBitCast(t, to: SIMD16<UInt32>.self) &- unsafeBitCast(magic, to: SIMD16<UInt32>.self)
        var result = p * unsafeBitCast((k &+ 127) &<< 23, to: V.self)
        result.replace(with: 0, where: x .< lo)
        result.replace(with: x, where: x .!= x)
        return result
    }
}
