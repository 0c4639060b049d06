import AnvilCore
import COneDNN
import Foundation

/// Swift kernels for what oneDNN lacks or does in a thread-count-dependent order.
/// Each works on raw arena memory and has a fixed summation order, so results do
/// not depend on how many threads run them.
enum SwiftKernels {
    /// How a `[N, C, spatial…]` float tensor is laid out, as far as these kernels care.
    enum ChannelLayout: Equatable {
        case plain
        /// Channels in blocks of `n` (nChw16c, nChw8c), padded to a multiple of `n`.
        case blocked(Int)
        /// Channels innermost (NHWC).
        case channelsLast
    }

    /// The channel layout of `descriptor`, nil when it is some other layout.
    static func channelLayout(_ descriptor: dnnl_memory_desc_t?, shape: [Int]) throws -> ChannelLayout? {
        guard let descriptor else { return .plain }
        guard (3...5).contains(shape.count), descriptor.format_kind == dnnl_blocked, descriptor.offset0 == 0 else { return nil }
        let blocking = descriptor.format_desc.blocking
        let strides = withUnsafeBytes(of: blocking.strides) { Array($0.bindMemory(to: Int64.self).prefix(shape.count)) }.map { Int($0) }
        if blocking.inner_nblks == 0 {
            // Channels last: [N][spatial…][C].
            var expected = [Int](repeating: 0, count: shape.count)
            expected[1] = 1
            var s = shape[1]
            for d in stride(from: shape.count - 1, through: 2, by: -1) { expected[d] = s; s *= shape[d] }
            expected[0] = s
            return strides == expected ? .channelsLast : nil
        }
        guard blocking.inner_nblks == 1, blocking.inner_idxs.0 == 1, [8, 16].contains(Int(blocking.inner_blks.0)) else { return nil }
        let block = Int(blocking.inner_blks.0)
        // Dense [N][C/block][spatial…][block]: check every stride.
        let padded = [shape[0], (shape[1] + block - 1) / block] + shape[2...]
        var expected = [Int](repeating: 0, count: shape.count)
        var s = block
        for d in stride(from: shape.count - 1, through: 2, by: -1) { expected[d] = s; s *= shape[d] }
        expected[1] = s; s *= padded[1]
        expected[0] = s
        return strides == expected ? .blocked(block) : nil
    }

    /// Mean over the spatial dimensions of `[N, C, spatial…]` into plain `[N, C, 1…]`.
    static func globalAveragePool(_ x: UnsafePointer<Float>, layout: ChannelLayout, n: Int, c: Int, spatial: Int, into y: UnsafeMutablePointer<Float>) {
        let scale = 1 / Float(spatial)
        switch layout {
        case .plain:
            for i in 0..<(n * c) {
                let row = x + i * spatial
                var lanes = SIMD8<Float>(repeating: 0)
                var s = 0
                while s + 8 <= spatial {
                    lanes += UnsafeRawPointer(row + s).loadUnaligned(as: SIMD8<Float>.self)
                    s += 8
                }
                var total = lanes.sum()
                while s < spatial { total += row[s]; s += 1 }
                y[i] = total * scale
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
        case .blocked(let block):
            let blocks = (c + block - 1) / block
            withUnsafeTemporaryAllocation(of: Float.self, capacity: block) { sums in
            for b in 0..<n {
                for cb in 0..<blocks {
                    let base = x + (b * blocks + cb) * spatial * block
                    for j in 0..<block { sums[j] = 0 }
                    for s in 0..<spatial {
                        let p = base + s * block
                        for j in 0..<block { sums[j] += p[j] }
                    }
                    for j in 0..<block where cb * block + j < c { y[b * c + cb * block + j] = sums[j] * scale }
                }
            }
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
        DispatchQueue.concurrentPerform(iterations: parts) { part in
            let lo = part * chunk, hi = min(inner, lo + chunk)
            softmaxColumns(src, outer: outer, axis: axis, inner: inner, columns: lo..<hi, into: dst, maxima: tmp, sums: tmp + inner)
        }
    }

    /// Softmax of the columns `columns` (positions along the inner dimension).
    static func softmaxColumns(_ x: UnsafePointer<Float>, outer: Int, axis: Int, inner: Int, columns: Range<Int>,
                               into y: UnsafeMutablePointer<Float>, maxima: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Float>) {
        guard !columns.isEmpty else { return }
        for o in 0..<outer {
            let src = x + o * axis * inner, dst = y + o * axis * inner
            for i in columns { maxima[i] = src[i] }
            for a in 1..<max(axis, 1) {
                let row = src + a * inner
                for i in columns { maxima[i] = max(maxima[i], row[i]) }
            }
            for i in columns { sums[i] = 0 }
            for a in 0..<axis {
                let row = src + a * inner, out = dst + a * inner
                for i in columns {
                    let e = Foundation.exp(row[i] - maxima[i])
                    out[i] = e
                    sums[i] += e
                }
            }
            for a in 0..<axis {
                let out = dst + a * inner
                for i in columns { out[i] /= sums[i] }
            }
        }
    }
}
