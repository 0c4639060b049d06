import AnvilCore

/// Swift kernels for the small integer and boolean tensors of masks and shapes
/// (Cast, And / Or / Xor, Where), on arena memory with numpy broadcasting. oneDNN has
/// no boolean type; these keep such layers off the reference kernels, which copy
/// every value into a tensor and back.
enum SwiftElementwise {
    /// The element types these kernels read and write.
    static let types: Set<DataType> = [.bool, .uint8, .int8, .int32, .int64, .float]

    /// Element offsets of up to three inputs broadcast to `shape` (numpy rules), walked
    /// in row-major order of the output.
    struct Broadcast {
        let shape: [Int]
        /// Per input, per output dimension: the input's element stride (0 where broadcast).
        let strides: [[Int]]

        /// Nil when an input does not broadcast to `shape`.
        init?(_ inputs: [[Int]], to shape: [Int]) {
            var all: [[Int]] = []
            for input in inputs {
                guard input.count <= shape.count else { return nil }
                let aligned = Array(repeating: 1, count: shape.count - input.count) + input
                let natural = ShapeMath.strides(aligned)
                var strides: [Int] = []
                for (d, size) in aligned.enumerated() {
                    guard size == shape[d] || size == 1 else { return nil }
                    strides.append(size == 1 ? 0 : natural[d])
                }
                all.append(strides)
            }
            self.shape = shape
            self.strides = all + Array(repeating: Array(repeating: 0, count: shape.count), count: 3 - all.count)
        }

        /// A walk over `shape` reading one input with explicit element strides (a strided view).
        init(shape: [Int], strides: [Int]) {
            self.shape = shape
            self.strides = [strides] + Array(repeating: Array(repeating: 0, count: shape.count), count: 2)
        }

        /// Calls `body(output, a, b, c)` with the element index of the output and of each input.
        func walk(_ body: (Int, Int, Int, Int) -> Void) {
            rows { out, a, b, c, count, sa, sb, sc in
                for i in 0..<count { body(out + i, a + i * sa, b + i * sb, c + i * sc) }
            }
        }

        /// `rows`, the rows split between the OpenMP team's threads when the output is large
        /// (`body` then runs concurrently on disjoint rows).
        func parallelRows(_ body: @Sendable (Int, Int, Int, Int, Int, Int, Int, Int) -> Void) {
            let count = shape.reduce(1, *), inner = shape.last ?? 1
            let parts = Parallel.parts(forElements: count)
            guard parts > 1, inner > 0, count / inner > 1 else { rows(body); return }
            Parallel.ranges(count / inner, parts: parts) { range in rows(range, body) }
        }

        /// Calls `body(output, a, b, c, count, strideA, strideB, strideC)` once per row of the
        /// output's last dimension, with the element index where the row starts in each.
        func rows(_ body: (Int, Int, Int, Int, Int, Int, Int, Int) -> Void) {
            guard let inner = shape.last, inner > 0 else {
                if shape.isEmpty { body(0, 0, 0, 0, 1, 0, 0, 0) }
                return
            }
            rows(0..<(shape.reduce(1, *) / inner), body)
        }

        /// `rows` for the rows numbered `range` only.
        func rows(_ range: Range<Int>, _ body: (Int, Int, Int, Int, Int, Int, Int, Int) -> Void) {
            guard !range.isEmpty, let last = shape.indices.last else { return }
            let inner = shape[last], (sa, sb, sc) = (strides[0][last], strides[1][last], strides[2][last])
            // The odometer's start: the outer index of the first row, and each input's offset there.
            var index = [Int](repeating: 0, count: shape.count)
            var (a, b, c) = (0, 0, 0)
            var rest = range.lowerBound
            for d in stride(from: last - 1, through: 0, by: -1) {
                index[d] = rest % shape[d]
                rest /= shape[d]
                a += index[d] * strides[0][d]; b += index[d] * strides[1][d]; c += index[d] * strides[2][d]
            }
            var out = range.lowerBound * inner
            let count = range.upperBound * inner
            while out < count {
                body(out, a, b, c, inner, sa, sb, sc)
                out += inner
                // Advance the outer dimensions like an odometer.
                var d = last - 1
                while d >= 0 {
                    index[d] += 1
                    a += strides[0][d]; b += strides[1][d]; c += strides[2][d]
                    if index[d] < shape[d] { break }
                    a -= strides[0][d] * shape[d]; b -= strides[1][d] * shape[d]; c -= strides[2][d] * shape[d]
                    index[d] = 0
                    d -= 1
                }
            }
        }
    }

    /// Float arithmetic (Add, Sub, Mul, Div) of two tensors broadcast as numpy does, row
    /// by row of the output's last dimension, 16 lanes at a time where a row is contiguous.
    static func arithmetic(_ op: String, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ walk: Broadcast, into y: UnsafeMutablePointer<Float>) {
        let code = ["Add": 0, "Sub": 1, "Mul": 2][op] ?? 3
        @inline(__always) func f(_ x: Float, _ z: Float) -> Float { code == 0 ? x + z : code == 1 ? x - z : code == 2 ? x * z : x / z }
        @inline(__always) func f16(_ x: SIMD16<Float>, _ z: SIMD16<Float>) -> SIMD16<Float> { code == 0 ? x + z : code == 1 ? x - z : code == 2 ? x * z : x / z }
        walk.rows { out, i, j, _, count, si, sj, _ in
            var k = 0
            if si <= 1, sj <= 1 {
                while k + 16 <= count {
                    let x = si == 1 ? UnsafeRawPointer(a + i + k).loadUnaligned(as: SIMD16<Float>.self) : SIMD16(repeating: a[i])
                    let z = sj == 1 ? UnsafeRawPointer(b + j + k).loadUnaligned(as: SIMD16<Float>.self) : SIMD16(repeating: b[j])
                    UnsafeMutableRawPointer(y + out + k).storeBytes(of: f16(x, z), as: SIMD16<Float>.self)
                    k += 16
                }
            }
            while k < count { y[out + k] = f(a[i + k * si], b[j + k * sj]); k += 1 }
        }
    }

    /// Integer Add, Sub, Mul (wrapping) or Div (truncating, 0 for a zero divisor), as the reference, of int64 or int32 tensors, broadcast.
    static func integerArithmetic(_ op: String, _ a: UnsafeRawPointer, _ b: UnsafeRawPointer, type: DataType, _ walk: Broadcast,
                                  into y: UnsafeMutableRawPointer) {
        walk.walk { o, i, j, _ in
            let x = integer(a, i, type), z = integer(b, j, type)
            let r: Int64
            switch op {
            case "Add": r = x &+ z
            case "Sub": r = x &- z
            case "Mul": r = x &* z
            case "Max": r = max(x, z)
            case "Min": r = min(x, z)
            default: r = Math.intDiv(x, z)
            }
            store(r, y, o, type)
        }
    }

    /// Equal, Less, LessOrEqual, Greater, GreaterOrEqual of two tensors of `type` (float,
    /// int32 or int64: what `ShapeKernelLowering.compare` takes), broadcast, into booleans.
    static func compare(_ op: String, _ a: UnsafeRawPointer, _ b: UnsafeRawPointer, type: DataType, _ walk: Broadcast,
                        into y: UnsafeMutableRawPointer) {
        let out = y.assumingMemoryBound(to: UInt8.self)
        switch type {
        case .float: compare(op, a.assumingMemoryBound(to: Float.self), b.assumingMemoryBound(to: Float.self), walk, into: out)
        case .int32: compare(op, a.assumingMemoryBound(to: Int32.self), b.assumingMemoryBound(to: Int32.self), walk, into: out)
        default: compare(op, a.assumingMemoryBound(to: Int64.self), b.assumingMemoryBound(to: Int64.self), walk, into: out)
        }
    }

    /// The comparison of typed elements, the op chosen once per row (a one-hot's Equal
    /// of [n, 1] and [k] makes rows of k); rows split between threads when there are many.
    @inline(__always)
    static func compare<T: Comparable>(_ op: String, _ a: UnsafePointer<T>, _ b: UnsafePointer<T>, _ walk: Broadcast, into y: UnsafeMutablePointer<UInt8>) {
        let code = ["Equal": 0, "Less": 1, "LessOrEqual": 2, "Greater": 3][op] ?? 4
        let (x, z, out) = (SwiftKernels.UnsafeSendable(a), SwiftKernels.UnsafeSendable(b), SwiftKernels.UnsafeSendable(UnsafePointer(y)))
        walk.parallelRows { o, i, j, _, count, si, sj, _ in
            let a = x.pointer, b = z.pointer, y = UnsafeMutablePointer(mutating: out.pointer) + o
            switch code {
            case 0: row(a + i, si, b + j, sj, count, y) { $0 == $1 }
            case 1: row(a + i, si, b + j, sj, count, y) { $0 < $1 }
            case 2: row(a + i, si, b + j, sj, count, y) { $0 <= $1 }
            case 3: row(a + i, si, b + j, sj, count, y) { $0 > $1 }
            default: row(a + i, si, b + j, sj, count, y) { $0 >= $1 }
            }
        }
    }

    /// `count` results of `f` on a row of `a` and `b` (element strides `sa`, `sb`), with
    /// the contiguous and scalar-operand cases as separate loops the compiler vectorizes.
    @inline(__always)
    static func row<T>(_ a: UnsafePointer<T>, _ sa: Int, _ b: UnsafePointer<T>, _ sb: Int, _ count: Int, _ y: UnsafeMutablePointer<UInt8>,
                       _ f: (T, T) -> Bool) {
        switch (sa, sb) {
        case (1, 1): for k in 0..<count { y[k] = f(a[k], b[k]) ? 1 : 0 }
        case (0, 1): let v = a[0]; for k in 0..<count { y[k] = f(v, b[k]) ? 1 : 0 }
        case (1, 0): let v = b[0]; for k in 0..<count { y[k] = f(a[k], v) ? 1 : 0 }
        default: for k in 0..<count { y[k] = f(a[k * sa], b[k * sb]) ? 1 : 0 }
        }
    }

    /// IsNaN of floats, or Not of booleans, into booleans.
    static func unary(_ op: String, _ x: UnsafeRawPointer, count: Int, into y: UnsafeMutableRawPointer) {
        for i in 0..<count {
            let v = op == "IsNaN" ? x.load(fromByteOffset: 4 * i, as: Float.self).isNaN : x.load(fromByteOffset: i, as: UInt8.self) == 0
            y.storeBytes(of: v ? 1 : 0, toByteOffset: i, as: UInt8.self)
        }
    }

    /// Copies elements of `size` bytes along a walk (broadcast or strided reads) into a dense output.
    static func gather(_ x: UnsafeRawPointer, size: Int, _ walk: Broadcast, into y: UnsafeMutableRawPointer) {
        walk.walk { o, i, _, _ in (y + o * size).copyMemory(from: x + i * size, byteCount: size) }
    }

    /// Reduction of the middle axis of a plain `[outer, n, inner]` tensor into `[outer, inner]`
    /// (ReduceMean, ReduceSum, ReduceProd, ReduceL1, ReduceL2, ReduceSumSquare, ReduceMax,
    /// ReduceMin): 16 lanes at a time in a fixed order, so results do not depend on the
    /// thread count; large tensors split between threads. Max and min propagate NaN; an
    /// empty max is -inf and an empty min +inf, as the reference.
    static func reduce(_ op: String, _ x: UnsafePointer<Float>, outer: Int, n: Int, inner: Int, into y: UnsafeMutablePointer<Float>) {
        let scale = 1 / Float(n)
        let add: @Sendable (Float, Float) -> Float = { $0 + $1 }
        switch op {
        case "ReduceMean": reduce(x, outer, n, inner, y, start: 0, { $0 + $1 }, add, merge: add) { $0 * scale }
        case "ReduceSum": reduce(x, outer, n, inner, y, start: 0, { $0 + $1 }, add, merge: add) { $0 }
        case "ReduceL1": reduce(x, outer, n, inner, y, start: 0, { $0 + $1.replacing(with: -$1, where: $1 .< 0) }, { $0 + abs($1) }, merge: add) { $0 }
        case "ReduceL2": reduce(x, outer, n, inner, y, start: 0, { $0 + $1 * $1 }, { $0 + $1 * $1 }, merge: add) { $0.squareRoot() }
        case "ReduceSumSquare": reduce(x, outer, n, inner, y, start: 0, { $0 + $1 * $1 }, { $0 + $1 * $1 }, merge: add) { $0 }
        case "ReduceMax":
            let larger: @Sendable (Float, Float) -> Float = { $1 > $0 || $1.isNaN ? $1 : $0 }
            reduce(x, outer, n, inner, y, start: -.infinity, { $0.replacing(with: $1, where: ($1 .> $0) .| ($1 .!= $1)) }, larger, merge: larger) { $0 }
        case "ReduceMin":
            let smaller: @Sendable (Float, Float) -> Float = { $1 < $0 || $1.isNaN ? $1 : $0 }
            reduce(x, outer, n, inner, y, start: .infinity, { $0.replacing(with: $1, where: ($1 .< $0) .| ($1 .!= $1)) }, smaller, merge: smaller) { $0 }
        default:
            // ReduceProd, in double precision as the reference.
            for o in 0..<outer {
                for j in 0..<inner {
                    var acc = 1.0
                    for k in 0..<n { acc *= Double(x[(o * n + k) * inner + j]) }
                    y[o * inner + j] = Float(acc)
                }
            }
        }
    }

    /// The reduction of `reduce`: `step` folds a vector (or `scalar` an element) of the
    /// input into the accumulator, which starts at `start`; `merge` combines two partial
    /// accumulators; `finish` maps the result.
    @inline(__always)
    static func reduce(_ x: UnsafePointer<Float>, _ outer: Int, _ n: Int, _ inner: Int, _ y: UnsafeMutablePointer<Float>, start: Float,
                       _ step: @escaping @Sendable (SIMD16<Float>, SIMD16<Float>) -> SIMD16<Float>, _ scalar: @escaping @Sendable (Float, Float) -> Float,
                       merge: @escaping @Sendable (Float, Float) -> Float, _ finish: @escaping @Sendable (Float) -> Float) {
        typealias V = SIMD16<Float>
        let source = SwiftKernels.UnsafeSendable(x), target = SwiftKernels.UnsafeSendable(UnsafePointer(y))
        let parts = Parallel.parts(forElements: outer * n * inner)
        if inner == 1 {
            // Each output reduces a contiguous row: two vector accumulators, then their lanes.
            Parallel.ranges(outer, parts: parts) { rows in
                let y = UnsafeMutablePointer(mutating: target.pointer)
                for o in rows {
                    let row = source.pointer + o * n
                    var a = V(repeating: start), b = a
                    var k = 0
                    while k + 32 <= n {
                        a = step(a, UnsafeRawPointer(row + k).loadUnaligned(as: V.self))
                        b = step(b, UnsafeRawPointer(row + k + 16).loadUnaligned(as: V.self))
                        k += 32
                    }
                    var acc = start
                    for lane in 0..<16 { acc = merge(merge(acc, a[lane]), b[lane]) }
                    while k < n { acc = scalar(acc, row[k]); k += 1 }
                    y[o] = finish(acc)
                }
            }
            return
        }
        // Otherwise 16 output columns at a time, reading n rows of the input.
        let chunks = (inner + 15) / 16
        Parallel.ranges(outer * chunks, parts: parts) { units in
            let y = UnsafeMutablePointer(mutating: target.pointer)
            for unit in units {
                let o = unit / chunks, j = unit % chunks * 16, width = min(16, inner - j)
                let base = source.pointer + o * n * inner + j
                if width == 16 {
                    var acc = V(repeating: start)
                    for k in 0..<n { acc = step(acc, UnsafeRawPointer(base + k * inner).loadUnaligned(as: V.self)) }
                    for lane in 0..<16 { y[o * inner + j + lane] = finish(acc[lane]) }
                } else {
                    for lane in 0..<width {
                        var acc = start
                        for k in 0..<n { acc = scalar(acc, base[k * inner + lane]) }
                        y[o * inner + j + lane] = finish(acc)
                    }
                }
            }
        }
    }

    @inline(__always) static func integer(_ p: UnsafeRawPointer, _ i: Int, _ t: DataType) -> Int64 {
        switch t {
        case .bool, .uint8: Int64(p.load(fromByteOffset: i, as: UInt8.self))
        case .int8: Int64(p.load(fromByteOffset: i, as: Int8.self))
        case .int32: Int64(p.load(fromByteOffset: 4 * i, as: Int32.self))
        case .float: Tensor.int64(fromDouble: Double(p.load(fromByteOffset: 4 * i, as: Float.self)))
        default: p.load(fromByteOffset: 8 * i, as: Int64.self)
        }
    }

    @inline(__always) static func store(_ v: Int64, _ p: UnsafeMutableRawPointer, _ i: Int, _ t: DataType) {
        switch t {
        case .bool: p.storeBytes(of: v != 0 ? 1 : 0, toByteOffset: i, as: UInt8.self)
        case .uint8: p.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: i, as: UInt8.self)
        case .int8: p.storeBytes(of: Int8(truncatingIfNeeded: v), toByteOffset: i, as: Int8.self)
        case .int32: p.storeBytes(of: Int32(truncatingIfNeeded: v), toByteOffset: 4 * i, as: Int32.self)
        case .float: p.storeBytes(of: Float(v), toByteOffset: 4 * i, as: Float.self)
        default: p.storeBytes(of: v, toByteOffset: 8 * i, as: Int64.self)
        }
    }

    /// ONNX Cast between the supported types (a float source is read as a float, not an integer).
    static func cast(_ x: UnsafeRawPointer, from: DataType, count: Int, to y: UnsafeMutableRawPointer, _ type: DataType) {
        // The common pairs in typed loops (masks and one-hots to float, indices between widths).
        // Large tensors split between threads; each part a typed loop with its conversion inlined.
        let source = SwiftKernels.UnsafeSendable(x.assumingMemoryBound(to: UInt8.self))
        let target = SwiftKernels.UnsafeSendable(UnsafePointer(y.assumingMemoryBound(to: UInt8.self)))
        func split(_ body: @Sendable (Range<Int>, UnsafeRawPointer, UnsafeMutableRawPointer) -> Void) {
            Parallel.ranges(count, parts: Parallel.parts(forElements: count)) { range in
                body(range, UnsafeRawPointer(source.pointer), UnsafeMutableRawPointer(mutating: target.pointer))
            }
        }
        switch (from, type) {
        case (.bool, .float): split { r, x, y in loop(x, y, r) { (v: UInt8) -> Float in v != 0 ? 1 : 0 } }; return
        case (.uint8, .float): split { r, x, y in loop(x, y, r) { (v: UInt8) -> Float in Float(v) } }; return
        case (.int8, .float): split { r, x, y in loop(x, y, r) { (v: Int8) -> Float in Float(v) } }; return
        case (.float, .bool): split { r, x, y in loop(x, y, r) { (v: Float) -> UInt8 in v != 0 ? 1 : 0 } }; return
        case (.int64, .float): split { r, x, y in loop(x, y, r) { (v: Int64) -> Float in Float(v) } }; return
        case (.int32, .float): split { r, x, y in loop(x, y, r) { (v: Int32) -> Float in Float(v) } }; return
        case (.int32, .int64): split { r, x, y in loop(x, y, r) { (v: Int32) -> Int64 in Int64(v) } }; return
        case (.int64, .int32): split { r, x, y in loop(x, y, r) { (v: Int64) -> Int32 in Int32(truncatingIfNeeded: v) } }; return
        case (.bool, .int64): split { r, x, y in loop(x, y, r) { (v: UInt8) -> Int64 in v != 0 ? 1 : 0 } }; return
        case (.bool, .int32): split { r, x, y in loop(x, y, r) { (v: UInt8) -> Int32 in v != 0 ? 1 : 0 } }; return
        case (.float, .int32):
            split { r, x, y in loop(x, y, r) { (v: Float) -> Int32 in Int32(truncatingIfNeeded: Tensor.int64(fromDouble: Double(v))) } }; return
        default: break
        }
        if from == .float {
            for i in 0..<count {
                let v = x.load(fromByteOffset: 4 * i, as: Float.self)
                switch type {
                case .float: y.storeBytes(of: v, toByteOffset: 4 * i, as: Float.self)
                case .bool: y.storeBytes(of: v != 0 ? 1 : 0, toByteOffset: i, as: UInt8.self)
                default: store(integer(x, i, from), y, i, type)
                }
            }
            return
        }
        for i in 0..<count { store(integer(x, i, from), y, i, type) }
    }

    /// `y[i] = f(x[i])` for `i` in `range`, with `f` inlined into the loop.
    @inline(__always)
    static func loop<S, D>(_ x: UnsafeRawPointer, _ y: UnsafeMutableRawPointer, _ range: Range<Int>, _ f: (S) -> D) {
        let source = x.assumingMemoryBound(to: S.self), target = y.assumingMemoryBound(to: D.self)
        for i in range { target[i] = f(source[i]) }
    }

    /// A logical op of two boolean tensors, broadcast.
    static func logical(_ op: String, _ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ walk: Broadcast, into y: UnsafeMutableRawPointer) {
        let f: (Bool, Bool) -> Bool = op == "And" ? { $0 && $1 } : op == "Or" ? { $0 || $1 } : { $0 != $1 }
        walk.walk { o, i, j, _ in
            let v = f(a.load(fromByteOffset: i, as: UInt8.self) != 0, b.load(fromByteOffset: j, as: UInt8.self) != 0)
            y.storeBytes(of: v ? 1 : 0, toByteOffset: o, as: UInt8.self)
        }
    }

    /// Where(condition, x, y), broadcast; elements of `size` bytes.
    static func select(_ condition: UnsafeRawPointer, _ x: UnsafeRawPointer, _ y: UnsafeRawPointer, size: Int, _ walk: Broadcast,
                       into out: UnsafeMutableRawPointer) {
        walk.rows { o, c, i, j, count, sc, si, sj in
            if size == 4 {
                // Floats and int32s: typed loads, no copy call per element.
                let px = x.assumingMemoryBound(to: UInt32.self), py = y.assumingMemoryBound(to: UInt32.self)
                let po = out.assumingMemoryBound(to: UInt32.self)
                for k in 0..<count {
                    po[o + k] = condition.load(fromByteOffset: c + k * sc, as: UInt8.self) != 0 ? px[i + k * si] : py[j + k * sj]
                }
                return
            }
            for k in 0..<count {
                let pick = condition.load(fromByteOffset: c + k * sc, as: UInt8.self) != 0
                (out + (o + k) * size).copyMemory(from: pick ? x + (i + k * si) * size : y + (j + k * sj) * size, byteCount: size)
            }
        }
    }
}
