import AnvilCore
import Foundation

/// Reference kernels for elementwise ops: unary math, binary arithmetic and
/// comparison with numpy broadcasting, logic, Where and variadic reductions.
public enum Elementwise {
    /// Applies a unary floating-point function; integer inputs use `integer` if given.
    public static func unary(_ x: Tensor, op: String, float: (Double) -> Double, integer: ((Int64) -> Int64)? = nil) throws -> Tensor {
        if x.dataType.isFloatingPoint { return try x.mapFloating(float) }
        if let integer, x.dataType.isInteger {
            if case .uint64(let a) = x.storage {
                return try Tensor(shape: x.shape, storage: .uint64(a.map { UInt64(bitPattern: integer(Int64(bitPattern: $0))) }))
            }
            return try Tensor(x.dataType, shape: x.shape, int64s: x.int64s.map(integer))
        }
        throw AnvilError.invalidTensor(name: op, reason: "\(op) does not accept \(x.dataType) input")
    }

    /// The broadcast output shape of several inputs, or an error naming the shapes.
    public static func broadcastShape(_ shapes: [[Int]], op: String) throws -> [Int] {
        guard let s = ShapeMath.broadcast(shapes) else {
            throw AnvilError.invalidTensor(name: op, reason: "shapes \(shapes.map { "\($0)" }.joined(separator: " and ")) cannot be broadcast together")
        }
        // Each input is broadcast to the result before the elements are combined.
        try MemoryPolicy.checkedCount(s, .int64, for: "the broadcast result")
        return s
    }

    /// Binary arithmetic with broadcasting. Floats use `float`, integers `integer`
    /// (uint64 through its bit pattern; `unsigned` handles division and comparison of uint64).
    public static func arithmetic(_ a: Tensor, _ b: Tensor, op: String, float: (Double, Double) -> Double,
                                  integer: (Int64, Int64) -> Int64, unsigned: ((UInt64, UInt64) -> UInt64)? = nil) throws -> Tensor {
        try requireSameType(a, b, op: op)
        let shape = try broadcastShape([a.shape, b.shape], op: op)
        let x = try Indexing.broadcast(a, to: shape), y = try Indexing.broadcast(b, to: shape)
        let type = a.dataType
        switch (x.storage, y.storage) {
        case (.float(let p), .float(let q)):
            var out = [Float](repeating: 0, count: p.count)
            for i in 0..<p.count { out[i] = Float(float(Double(p[i]), Double(q[i]))) }
            return try Tensor(shape: shape, storage: .float(out))
        case (.double(let p), .double(let q)):
            return try Tensor(shape: shape, storage: .double(zip(p, q).map(float)))
        case (.uint64(let p), .uint64(let q)) where unsigned != nil:
            return try Tensor(shape: shape, storage: .uint64(zip(p, q).map(unsigned!)))
        default:
            if type.isFloatingPoint {
                return try Tensor(type, shape: shape, floats: zip(x.floats, y.floats).map { Float(float(Double($0), Double($1))) })
            }
            if type == .uint64 {
                return try Tensor(shape: shape, storage: .uint64(zip(x.int64s, y.int64s).map { UInt64(bitPattern: integer($0, $1)) }))
            }
            return try Tensor(type, shape: shape, int64s: zip(x.int64s, y.int64s).map(integer))
        }
    }

    /// Comparison with broadcasting, producing bool.
    public static func compare(_ a: Tensor, _ b: Tensor, op: String, float: (Double, Double) -> Bool, integer: (Int64, Int64) -> Bool) throws -> Tensor {
        try requireSameType(a, b, op: op)
        let shape = try broadcastShape([a.shape, b.shape], op: op)
        let x = try Indexing.broadcast(a, to: shape), y = try Indexing.broadcast(b, to: shape)
        if case .string(let p) = x.storage, case .string(let q) = y.storage {
            let eq = zip(p, q).map { $0 == $1 }
            return try Tensor(bools: eq, shape: shape)
        }
        if case .uint64(let p) = x.storage, case .uint64(let q) = y.storage {
            // Order-preserving map of uint64 onto int64 for comparison.
            let f = { (v: UInt64) in Int64(bitPattern: v ^ 0x8000_0000_0000_0000) }
            return try Tensor(bools: zip(p, q).map { integer(f($0), f($1)) }, shape: shape)
        }
        if a.dataType.isFloatingPoint || b.dataType.isFloatingPoint {
            return try Tensor(bools: zip(x.doubles, y.doubles).map(float), shape: shape)
        }
        return try Tensor(bools: zip(x.int64s, y.int64s).map(integer), shape: shape)
    }

    /// Boolean logic with broadcasting.
    public static func logic(_ a: Tensor, _ b: Tensor, op: String, _ f: (Bool, Bool) -> Bool) throws -> Tensor {
        let shape = try broadcastShape([a.shape, b.shape], op: op)
        let x = try Indexing.broadcast(a, to: shape).bools, y = try Indexing.broadcast(b, to: shape).bools
        return try Tensor(bools: zip(x, y).map(f), shape: shape)
    }

    /// ONNX binds both operands of these ops to one type variable T.
    static func requireSameType(_ a: Tensor, _ b: Tensor, op: String) throws {
        guard a.dataType == b.dataType else {
            throw AnvilError.invalidTensor(name: op, reason: "inputs must have the same element type, got \(a.dataType) and \(b.dataType)")
        }
    }

    /// Where(condition, x, y) with three-way broadcasting.
    public static func select(_ c: Tensor, _ x: Tensor, _ y: Tensor) throws -> Tensor {
        try requireSameType(x, y, op: "Where")
        let shape = try broadcastShape([c.shape, x.shape, y.shape], op: "Where")
        // Everything this kernel holds at once: the condition, three index arrays, the joined values and the result.
        let n = shape.reduce(1, *), element = max(x.dataType.byteSize, 1)
        try MemoryPolicy.check(MemoryPolicy.bytes(count: n, elementSize: 1 + 3 * 8 + element).flatMap { b in
            MemoryPolicy.bytes(count: x.count + y.count, elementSize: element).map { b + $0 } }, for: "Where over \(shape)")
        let cond = try Indexing.broadcast(c, to: shape).bools
        let xs = Indexing.broadcastSource(x.shape, to: shape)
        let ys = Indexing.broadcastSource(y.shape, to: shape)
        let joined = try x.reshaped([x.count]).appending(y.cast(to: x.dataType).reshaped([y.count]))
        let picks = (0..<cond.count).map { cond[$0] ? xs[$0] : x.count + ys[$0] }
        return try joined.gathered(picks, shape: shape)
    }

    /// Folds several inputs with broadcasting (Sum, Min, Max, Mean).
    public static func variadic(_ inputs: [Tensor], op: String, float: @escaping (Double, Double) -> Double,
                                integer: @escaping (Int64, Int64) -> Int64) throws -> Tensor {
        guard var acc = inputs.first else { throw AnvilError.invalidTensor(name: op, reason: "\(op) needs at least one input") }
        for t in inputs.dropFirst() { acc = try arithmetic(acc, t, op: op, float: float, integer: integer) }
        return acc
    }

    /// Clip(x, min, max); NaN propagates.
    public static func clip(_ x: Tensor, min lo: Tensor?, max hi: Tensor?) throws -> Tensor {
        if x.dataType.isFloatingPoint {
            let l = lo.map { $0.double(at: 0) } ?? -.infinity, h = hi.map { $0.double(at: 0) } ?? .infinity
            return try x.mapFloating { $0.isNaN ? $0 : Swift.min(Swift.max($0, l), h) }
        }
        let l = lo?.int64s.first ?? .min, h = hi?.int64s.first ?? .max
        if case .uint64(let a) = x.storage {
            let ul = lo.map { t -> UInt64 in if case .uint64(let v) = t.storage { return v[0] }; return 0 } ?? 0
            let uh = hi.map { t -> UInt64 in if case .uint64(let v) = t.storage { return v[0] }; return .max } ?? .max
            return try Tensor(shape: x.shape, storage: .uint64(a.map { Swift.min(Swift.max($0, ul), uh) }))
        }
        return try Tensor(x.dataType, shape: x.shape, int64s: x.int64s.map { Swift.min(Swift.max($0, l), h) })
    }

    /// Bitwise ops and shifts on integer tensors.
    public static func bitwise(_ a: Tensor, _ b: Tensor, op: String, _ f: @escaping (UInt64, UInt64) -> UInt64) throws -> Tensor {
        let width = UInt64(a.dataType.byteSize * 8)
        let mask: UInt64 = width == 64 ? .max : (1 << width) - 1
        return try arithmetic(a, b, op: op, float: { _, _ in .nan },
                              integer: { Int64(bitPattern: f(UInt64(bitPattern: $0) & mask, UInt64(bitPattern: $1) & mask)) },
                              unsigned: f)
    }
}

extension Tensor {
    /// This flat tensor followed by another of the same element type.
    public func appending(_ other: Tensor) throws -> Tensor {
        try Tensor(shape: [count + other.count], storage: Tensor.concatenatedStorage([self, other], type: dataType))
    }
}

/// ONNX math helpers that C's libm lacks.
public enum Math {
    /// Error function.
    public static func erf(_ x: Double) -> Double { Foundation.erf(x) }

    /// Floor modulo (Python's %) for integers; Mod with fmod=0.
    public static func floorMod(_ a: Int64, _ b: Int64) -> Int64 {
        guard b != 0 else { return 0 }
        let r = a % b
        return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r
    }

    /// Floor division for integers (numpy semantics), zero divisor gives 0 instead of trapping.
    public static func intDiv(_ a: Int64, _ b: Int64) -> Int64 {
        guard b != 0 else { return 0 }
        if a == .min && b == -1 { return .min }
        return a / b
    }
}
