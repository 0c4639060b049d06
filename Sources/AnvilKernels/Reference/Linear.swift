import AnvilCore
import Dispatch

/// Reference kernels for matrix products and convolutions. They compute in Float
/// (Double for double tensors) with a cache-friendly loop order and use both cores,
/// because the reference executor must run a ResNet-50 in seconds.
public enum Linear {
    /// C[m×n] = A[m×k] · B[k×n] (+ C when `accumulate`), all row-major, Float.
    public static func sgemm(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool) {
        let rowsPerTask = max(1, min(64, (m + 7) / 8))
        let tasks = (m + rowsPerTask - 1) / rowsPerTask
        // Addresses cross into the worker closure as integers: each task writes
        // its own rows of C, so the tasks never touch the same memory.
        let (aAddress, bAddress, cAddress) = (Int(bitPattern: a), Int(bitPattern: b), Int(bitPattern: c))
        let work: @Sendable (Int) -> Void = { t in
            let a = UnsafePointer<Float>(bitPattern: aAddress)!
            let b = UnsafePointer<Float>(bitPattern: bAddress)!
            let c = UnsafeMutablePointer<Float>(bitPattern: cAddress)!
            let r0 = t * rowsPerTask, r1 = min(m, r0 + rowsPerTask)
            for i in r0..<r1 {
                let crow = c + i * ldc
                if !accumulate { crow.update(repeating: 0, count: n) }
                let arow = a + i * lda
                var p = 0
                while p < k {
                    // No skipping of zeros: 0 · NaN and 0 · ∞ are NaN.
                    let av = arow[p], brow = b + p * ldb
                    for j in 0..<n { crow[j] += av * brow[j] }
                    p += 1
                }
            }
        }
        if tasks > 1 && m * n * k > 1 << 16 {
            DispatchQueue.concurrentPerform(iterations: tasks, execute: work)
        } else {
            for t in 0..<tasks { work(t) }
        }
    }

    /// Double-precision matrix product for double tensors.
    static func dgemm(m: Int, n: Int, k: Int, a: [Double], aOffset: Int, b: [Double], bOffset: Int) -> [Double] {
        var c = [Double](repeating: 0, count: m * n)
        for i in 0..<m {
            for p in 0..<k {
                let av = a[aOffset + i * k + p]
                for j in 0..<n { c[i * n + j] += av * b[bOffset + p * n + j] }
            }
        }
        return c
    }

    /// numpy.matmul: 1-D operands are promoted, batch dimensions broadcast.
    public static func matmul(_ a: Tensor, _ b: Tensor) throws -> Tensor {
        guard a.rank >= 1, b.rank >= 1 else { throw AnvilError.invalidTensor(name: "MatMul", reason: "operands must have rank ≥ 1, got \(a.shape) and \(b.shape)") }
        let aShape = a.rank == 1 ? [1, a.shape[0]] : a.shape
        let bShape = b.rank == 1 ? [b.shape[0], 1] : b.shape
        let m = aShape[aShape.count - 2], k = aShape[aShape.count - 1]
        let k2 = bShape[bShape.count - 2], n = bShape[bShape.count - 1]
        guard k == k2 else { throw AnvilError.invalidTensor(name: "MatMul", reason: "inner dimensions differ: \(a.shape) × \(b.shape)") }
        let batch = try Elementwise.broadcastShape([Array(aShape.dropLast(2)), Array(bShape.dropLast(2))], op: "MatMul")
        let batchCount = batch.reduce(1, *)
        let aBatch = Indexing.broadcastSource(Array(aShape.dropLast(2)), to: batch)
        let bBatch = Indexing.broadcastSource(Array(bShape.dropLast(2)), to: batch)
        var outShape = batch + [m, n]
        try MemoryPolicy.checkedCount(outShape, a.dataType, for: "the product")
        if a.rank == 1 { outShape.remove(at: outShape.count - 2) }
        if b.rank == 1 { outShape.removeLast() }
        if a.dataType == .double || a.dataType.isInteger {
            let x = a.doubles, y = b.doubles
            var out: [Double] = []
            out.reserveCapacity(batchCount * m * n)
            for t in 0..<batchCount { out += dgemm(m: m, n: n, k: k, a: x, aOffset: aBatch[t] * m * k, b: y, bOffset: bBatch[t] * k * n) }
            if a.dataType.isInteger { return try Tensor(a.dataType, shape: outShape, int64s: out.map { Tensor.int64(fromDouble: $0) }) }
            return try Tensor(.double, shape: outShape, doubles: out)
        }
        let x = a.floats, y = b.floats
        var out = [Float](repeating: 0, count: batchCount * m * n)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeBufferPointer { yp in
                out.withUnsafeMutableBufferPointer { op in
                    for t in 0..<batchCount {
                        sgemm(m: m, n: n, k: k, a: xp.baseAddress! + aBatch[t] * m * k, lda: k,
                              b: yp.baseAddress! + bBatch[t] * k * n, ldb: n, c: op.baseAddress! + t * m * n, ldc: n, accumulate: false)
                    }
                }
            }
        }
        return try Tensor(a.dataType, shape: outShape, floats: out)
    }

    /// Transposes a 2-D tensor.
    static func transpose2D(_ t: Tensor) throws -> Tensor {
        let r = t.shape[0], c = t.shape[1]
        var idx = [Int](repeating: 0, count: r * c)
        for i in 0..<c { for j in 0..<r { idx[i * r + j] = j * c + i } }
        return try t.gathered(idx, shape: [c, r])
    }

    /// Gemm: alpha·op(A)·op(B) + beta·C with C broadcast to the result.
    public static func gemm(_ a: Tensor, _ b: Tensor, _ c: Tensor?, alpha: Float, beta: Float, transA: Bool, transB: Bool) throws -> Tensor {
        guard a.rank == 2, b.rank == 2 else { throw AnvilError.invalidTensor(name: "Gemm", reason: "A and B must be 2-D, got \(a.shape) and \(b.shape)") }
        let x = transA ? try transpose2D(a) : a
        let y = transB ? try transpose2D(b) : b
        var product = try matmul(x, y)
        if alpha != 1 { product = try product.mapFloating { $0 * Double(alpha) } }
        guard let c, beta != 0 else { return product }
        let scaled = beta == 1 ? c : try c.mapFloating { $0 * Double(beta) }
        return try Elementwise.arithmetic(product, scaled.cast(to: product.dataType), op: "Gemm", float: +, integer: &+)
    }

    /// N-d convolution (NCHW...), groups and dilations, via im2col and sgemm.
    public static func conv(_ x: Tensor, _ w: Tensor, _ bias: Tensor?, geometry g: WindowGeometry, group: Int) throws -> Tensor {
        let batch = x.shape[0], cin = x.shape[1], cout = w.shape[0]
        let spatialIn = Array(x.shape[2...])
        guard group > 0, cin % group == 0, cout % group == 0, cin / group == w.shape[1] else {
            throw AnvilError.invalidTensor(name: "Conv", reason: "weight \(w.shape) does not fit input channels \(cin) with group \(group)")
        }
        let cinG = cin / group, coutG = cout / group
        let kSize = g.kernel.reduce(1, *), outSize = g.output.reduce(1, *), inSize = spatialIn.reduce(1, *)
        let rows = cinG * kSize
        // A kernel or output of hostile size: refused before the im2col buffers are allocated.
        let outputs = try MemoryPolicy.checkedCount([batch, cout] + g.output, .float, for: "Conv's output")
        let columns = try MemoryPolicy.checkedCount([rows, outSize], .float, for: "Conv's im2col columns")
        let entries = try MemoryPolicy.checkedCount(g.kernel + g.output, .int64, for: "the im2col table")
        // All three are held at once (each alone under the limit was not enough: a fuzzed engine
        // took 900 MB under a 256 MB limit).
        try MemoryPolicy.check(MemoryPolicy.total([(outputs, 4), (columns, 4), (entries, 8)]), for: "Conv's output, im2col columns and table together")
        let table = try im2colTable(spatialIn: spatialIn, g: g)
        let xs = x.floats, ws = w.floats, bs = bias?.floats
        var out = [Float](repeating: 0, count: batch * cout * outSize)
        var cols = [Float](repeating: 0, count: rows * outSize)
        xs.withUnsafeBufferPointer { xp in
            ws.withUnsafeBufferPointer { wp in
                out.withUnsafeMutableBufferPointer { op in
                    cols.withUnsafeMutableBufferPointer { cp in
                        for nb in 0..<batch {
                            for gi in 0..<group {
                                let xBase = xp.baseAddress! + (nb * cin + gi * cinG) * inSize
                                for c in 0..<cinG {
                                    for k in 0..<kSize {
                                        let row = cp.baseAddress! + (c * kSize + k) * outSize
                                        let src = table, base = k * outSize
                                        for o in 0..<outSize {
                                            let s = src[base + o]
                                            row[o] = s >= 0 ? xBase[c * inSize + s] : 0
                                        }
                                    }
                                }
                                sgemm(m: coutG, n: outSize, k: rows, a: wp.baseAddress! + gi * coutG * rows, lda: rows,
                                      b: cp.baseAddress!, ldb: outSize, c: op.baseAddress! + (nb * cout + gi * coutG) * outSize,
                                      ldc: outSize, accumulate: false)
                            }
                        }
                        if let bs {
                            for nb in 0..<batch { for c in 0..<cout {
                                let p = op.baseAddress! + (nb * cout + c) * outSize
                                for o in 0..<outSize { p[o] += bs[c] }
                            } }
                        }
                    }
                }
            }
        }
        return try Tensor(x.dataType, shape: [batch, cout] + g.output, floats: out)
    }

    /// For each (kernel offset, output position), the flat input position it reads, or -1 in padding.
    static func im2colTable(spatialIn: [Int], g: WindowGeometry) throws -> [Int] {
        let nd = spatialIn.count
        _ = try MemoryPolicy.checkedCount(g.kernel + g.output, .int64, for: "the im2col table")
        let kSize = g.kernel.reduce(1, *), outSize = g.output.reduce(1, *)
        let inStrides = ShapeMath.strides(spatialIn)
        var table = [Int](repeating: -1, count: kSize * outSize)
        var kIndex = 0
        Indexing.forEachIndex(g.kernel) { kc in
            var oIndex = 0
            Indexing.forEachIndex(g.output) { oc in
                var flat = 0
                var inside = true
                for d in 0..<nd {
                    let p = oc[d] * g.strides[d] - g.padsBegin[d] + kc[d] * g.dilations[d]
                    if p < 0 || p >= spatialIn[d] { inside = false; break }
                    flat += p * inStrides[d]
                }
                table[kIndex * outSize + oIndex] = inside ? flat : -1
                oIndex += 1
            }
            kIndex += 1
        }
        return table
    }

    /// N-d transposed convolution: y = col2im(Wᵀ · x).
    public static func convTranspose(_ x: Tensor, _ w: Tensor, _ bias: Tensor?, strides: [Int], dilations: [Int],
                                     padsBegin: [Int], outputSpatial: [Int], group: Int) throws -> Tensor {
        let batch = x.shape[0], cin = x.shape[1]
        // group ≤ channels keeps Cout = Cout/group · group within the weights' size.
        guard group > 0, group <= max(cin, 1), cin % group == 0, w.shape[0] == cin else {
            throw AnvilError.invalidTensor(name: "ConvTranspose", reason: "weight \(w.shape) does not fit input channels \(cin) with group \(group)")
        }
        let coutG = w.shape[1], cout = coutG * group, cinG = cin / group
        let kernel = Array(w.shape[2...])
        let spatialIn = Array(x.shape[2...])
        let nd = kernel.count
        let kSize = kernel.reduce(1, *), inSize = spatialIn.reduce(1, *), outSize = outputSpatial.reduce(1, *)
        let outStrides = ShapeMath.strides(outputSpatial)
        // Output position of each (kernel offset, input position), -1 when cropped.
        var table = [Int](repeating: -1, count: kSize * inSize)
        var kIndex = 0
        Indexing.forEachIndex(kernel) { kc in
            var iIndex = 0
            Indexing.forEachIndex(spatialIn) { ic in
                var flat = 0, inside = true
                for d in 0..<nd {
                    let p = ic[d] * strides[d] - padsBegin[d] + kc[d] * dilations[d]
                    if p < 0 || p >= outputSpatial[d] { inside = false; break }
                    flat += p * outStrides[d]
                }
                table[kIndex * inSize + iIndex] = inside ? flat : -1
                iIndex += 1
            }
            kIndex += 1
        }
        let xs = x.floats, ws = w.floats
        var out = [Float](repeating: 0, count: batch * cout * outSize)
        let rows = coutG * kSize
        var wt = [Float](repeating: 0, count: rows * cinG)
        var cols = [Float](repeating: 0, count: rows * inSize)
        for gi in 0..<group {
            // Wᵀ for this group: [coutG·kSize × cinG].
            for ci in 0..<cinG { for r in 0..<rows { wt[r * cinG + ci] = ws[(gi * cinG + ci) * rows + r] } }
            for nb in 0..<batch {
                xs.withUnsafeBufferPointer { xp in
                    wt.withUnsafeBufferPointer { wp in
                        cols.withUnsafeMutableBufferPointer { cp in
                            sgemm(m: rows, n: inSize, k: cinG, a: wp.baseAddress!, lda: cinG,
                                  b: xp.baseAddress! + (nb * cin + gi * cinG) * inSize, ldb: inSize, c: cp.baseAddress!, ldc: inSize, accumulate: false)
                        }
                    }
                }
                for co in 0..<coutG {
                    let base = (nb * cout + gi * coutG + co) * outSize
                    for k in 0..<kSize {
                        let r = co * kSize + k
                        for i in 0..<inSize {
                            let o = table[k * inSize + i]
                            if o >= 0 { out[base + o] += cols[r * inSize + i] }
                        }
                    }
                }
            }
        }
        if let b = bias?.floats {
            for nb in 0..<batch { for c in 0..<cout { for o in 0..<outSize { out[(nb * cout + c) * outSize + o] += b[c] } } }
        }
        return try Tensor(x.dataType, shape: [batch, cout] + outputSpatial, floats: out)
    }
}

extension Linear {
    /// Exact integer convolution (ConvInteger, QLinearConv): zero points already
    /// subtracted, accumulation in Int64. `w` is [cout, cin/group, k...].
    public static func convInteger(_ x: [Int64], xShape: [Int], _ w: [Int64], wShape: [Int], geometry g: WindowGeometry, group: Int) throws -> [Int64] {
        let batch = xShape[0], cin = xShape[1], cout = wShape[0]
        guard group > 0, cin % group == 0, cout % group == 0, cin / group == wShape[1] else {
            throw AnvilError.invalidTensor(name: "Conv", reason: "weight \(wShape) does not fit input channels \(cin) with group \(group)")
        }
        let spatial = Array(xShape[2...])
        let cinG = cin / group, coutG = cout / group
        let kSize = g.kernel.reduce(1, *), outSize = g.output.reduce(1, *), inSize = spatial.reduce(1, *)
        let table = try im2colTable(spatialIn: spatial, g: g)
        var out = [Int64](repeating: 0, count: batch * cout * outSize)
        for nb in 0..<batch { for gi in 0..<group { for oc in 0..<coutG {
            let co = gi * coutG + oc
            for c in 0..<cinG { for k in 0..<kSize {
                let weight = w[(co * cinG + c) * kSize + k]
                if weight == 0 { continue }
                let xBase = (nb * cin + gi * cinG + c) * inSize
                for o in 0..<outSize {
                    let s = table[k * outSize + o]
                    if s >= 0 { out[(nb * cout + co) * outSize + o] += weight * x[xBase + s] }
                }
            } }
        } } }
        return out
    }

    /// Exact integer matmul with numpy broadcasting of batch dimensions.
    public static func matmulInteger(_ a: [Int64], aShape: [Int], _ b: [Int64], bShape: [Int]) throws -> (values: [Int64], shape: [Int]) {
        let ta = try Tensor(int64s: a, shape: aShape), tb = try Tensor(int64s: b, shape: bShape)
        // Values fit Double exactly for 8- and 16-bit inputs; matmul accumulates in Double.
        let r = try matmul(ta.cast(to: .double), tb.cast(to: .double))
        return (r.doubles.map { Int64($0) }, r.shape)
    }
}
