import AnvilCore
import Foundation

/// Elementwise math, activations, comparisons, logic and casts.
func registerElementwise(_ b: inout KernelTableBuilder) {
    // Unary ops without attributes: (float function, integer function if the op accepts ints).
    let unary: [(String, @Sendable (Double) -> Double, (@Sendable (Int64) -> Int64)?)] = [
        ("Abs", { Swift.abs($0) }, { $0 == .min ? $0 : Swift.abs($0) }),
        ("Neg", { -$0 }, { 0 &- $0 }),
        ("Sqrt", { $0.squareRoot() }, nil),
        ("Reciprocal", { 1 / $0 }, nil),
        ("Exp", { Foundation.exp($0) }, nil),
        ("Log", { Foundation.log($0) }, nil),
        ("Erf", { Foundation.erf($0) }, nil),
        ("Tanh", { Foundation.tanh($0) }, nil),
        ("Sigmoid", { $0 >= 0 ? 1 / (1 + Foundation.exp(-$0)) : Foundation.exp($0) / (1 + Foundation.exp($0)) }, nil),
        ("Relu", { $0.isNaN ? $0 : Swift.max($0, 0) }, { Swift.max($0, 0) }),
        ("Floor", { $0.rounded(.down) }, nil),
        ("Ceil", { $0.rounded(.up) }, nil),
        ("Round", { $0.rounded(.toNearestOrEven) }, nil),
        ("Sign", { $0.isNaN ? $0 : ($0 > 0 ? 1 : ($0 < 0 ? -1 : 0)) }, { $0.signum() }),
        ("Sin", { Foundation.sin($0) }, nil), ("Cos", { Foundation.cos($0) }, nil), ("Tan", { Foundation.tan($0) }, nil),
        ("Asin", { Foundation.asin($0) }, nil), ("Acos", { Foundation.acos($0) }, nil), ("Atan", { Foundation.atan($0) }, nil),
        ("Sinh", { Foundation.sinh($0) }, nil), ("Cosh", { Foundation.cosh($0) }, nil),
        ("Asinh", { Foundation.asinh($0) }, nil), ("Acosh", { Foundation.acosh($0) }, nil), ("Atanh", { Foundation.atanh($0) }, nil),
        ("Softsign", { $0 / (1 + Swift.abs($0)) }, nil),
        ("Softplus", { $0 > 30 ? $0 : Foundation.log1p(Foundation.exp($0)) }, nil),
        ("Mish", { $0 * Foundation.tanh($0 > 30 ? $0 : Foundation.log1p(Foundation.exp($0))) }, nil),
    ]
    for (name, f, i) in unary {
        b.add1(name) { ctx in try Elementwise.unary(ctx.input(0), op: name, float: f, integer: i) }
    }
    // Activations with attributes.
    b.add1("LeakyRelu") { ctx in
        let alpha = Double(try ctx.attributes.float("alpha", 0.01))
        return try ctx.input(0).mapFloating { $0 < 0 ? $0 * alpha : $0 }
    }
    b.add1("Elu") { ctx in
        let alpha = Double(try ctx.attributes.float("alpha", 1))
        return try ctx.input(0).mapFloating { $0 < 0 ? alpha * (Foundation.exp($0) - 1) : $0 }
    }
    b.add1("Celu") { ctx in
        let alpha = Double(try ctx.attributes.float("alpha", 1))
        return try ctx.input(0).mapFloating { $0.isNaN ? $0 : Swift.max(0, $0) + Swift.min(0, alpha * (Foundation.exp($0 / alpha) - 1)) }
    }
    b.add1("Selu") { ctx in
        let alpha = Double(try ctx.attributes.float("alpha", 1.67326319217681884765625))
        let gamma = Double(try ctx.attributes.float("gamma", 1.05070102214813232421875))
        return try ctx.input(0).mapFloating { $0 <= 0 ? gamma * (alpha * Foundation.exp($0) - alpha) : gamma * $0 }
    }
    b.add1("ThresholdedRelu") { ctx in
        let alpha = Double(try ctx.attributes.float("alpha", 1))
        return try ctx.input(0).mapFloating { $0 > alpha ? $0 : 0 }
    }
    b.add1("HardSigmoid") { ctx in
        let alpha = Double(try ctx.attributes.float("alpha", 0.2)), beta = Double(try ctx.attributes.float("beta", 0.5))
        return try ctx.input(0).mapFloating { $0.isNaN ? $0 : Swift.max(0, Swift.min(1, alpha * $0 + beta)) }
    }
    b.add1("HardSwish") { ctx in
        try ctx.input(0).mapFloating { $0 * Swift.max(0, Swift.min(1, $0 / 6 + 0.5)) }
    }
    b.add1("Gelu") { ctx in
        let approximate = try ctx.attributes.string("approximate", "none")
        guard approximate == "none" || approximate == "tanh" else { throw ctx.fail("approximate must be 'none' or 'tanh', found '\(approximate)'") }
        if approximate == "tanh" {
            return try ctx.input(0).mapFloating { x in 0.5 * x * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x))) }
        }
        return try ctx.input(0).mapFloating { x in 0.5 * x * (1 + Foundation.erf(x / 2.0.squareRoot())) }
    }
    b.add1("Shrink") { ctx in
        let bias = Double(try ctx.attributes.float("bias", 0)), lambd = Double(try ctx.attributes.float("lambd", 0.5))
        let x = try ctx.input(0)
        let f: (Double) -> Double = { $0 < -lambd ? $0 + bias : ($0 > lambd ? $0 - bias : 0) }
        if x.dataType.isFloatingPoint { return try x.mapFloating(f) }
        return try Tensor(x.dataType, shape: x.shape, int64s: x.doubles.map { Tensor.int64(fromDouble: f($0)) })
    }
    b.add1("Swish", since: 24) { ctx in
        let alpha = Double(try ctx.attributes.float("alpha", 1))
        return try ctx.input(0).mapFloating { $0 / (1 + Foundation.exp(-alpha * $0)) }
    }
    b.add1("SwiGLU", since: 25) { ctx in
        let a = try ctx.input(0), g = try ctx.input(1)
        guard a.shape == g.shape else { throw ctx.fail("A \(a.shape) and B \(g.shape) must have the same shape") }
        let alpha = Double(try ctx.attributes.float("alpha", 1))
        let swish = try a.mapFloating { $0 / (1 + Foundation.exp(-alpha * $0)) }
        return try Elementwise.arithmetic(swish, g, op: "SwiGLU", float: *, integer: &*)
    }
    b.add1("PRelu") { ctx in
        try Elementwise.arithmetic(ctx.input(0), ctx.input(1), op: "PRelu", float: { $0 < 0 ? $0 * $1 : $0 }, integer: { $0 < 0 ? $0 &* $1 : $0 })
    }
    // Binary arithmetic.
    b.add1("Add") { ctx in try Elementwise.arithmetic(ctx.input(0), ctx.input(1), op: "Add", float: +, integer: &+, unsigned: &+) }
    b.add1("Sub") { ctx in try Elementwise.arithmetic(ctx.input(0), ctx.input(1), op: "Sub", float: -, integer: &-, unsigned: &-) }
    b.add1("Mul") { ctx in try Elementwise.arithmetic(ctx.input(0), ctx.input(1), op: "Mul", float: *, integer: &*, unsigned: &*) }
    b.add1("Div") { ctx in
        try Elementwise.arithmetic(ctx.input(0), ctx.input(1), op: "Div", float: /, integer: Math.intDiv, unsigned: { $1 == 0 ? 0 : $0 / $1 })
    }
    b.add1("Pow") { ctx in
        let x = try ctx.input(0), y = try ctx.input(1).cast(to: ctx.input(0).dataType)
        if x.dataType.isInteger {
            let shape = try Elementwise.broadcastShape([x.shape, y.shape], op: "Pow")
            let p = try Indexing.broadcast(x, to: shape).doubles, q = try Indexing.broadcast(ctx.input(1), to: shape).doubles
            return try Tensor(x.dataType, shape: shape, int64s: zip(p, q).map { Tensor.int64(fromDouble: Foundation.pow($0, $1)) })
        }
        let exponent = try ctx.input(1)
        let shape = try Elementwise.broadcastShape([x.shape, exponent.shape], op: "Pow")
        let p = try Indexing.broadcast(x, to: shape).doubles, q = try Indexing.broadcast(exponent, to: shape).doubles
        _ = y
        return try Tensor(x.dataType, shape: shape, doubles: zip(p, q).map { Foundation.pow($0, $1) })
    }
    b.add1("Mod") { ctx in
        let fmod = try ctx.attributes.int("fmod", 0) != 0
        let x = try ctx.input(0), y = try ctx.input(1)
        // fmod=0 on floats is numpy's mod: the result takes the divisor's sign.
        let floorMod: @Sendable (Double, Double) -> Double = { a, b in
            let r = Foundation.fmod(a, b)
            if b.isInfinite && a.isFinite { return r != 0 && (r < 0) != (b < 0) ? b : r }
            return r != 0 && (r < 0) != (b < 0) ? r + b : r
        }
        return try Elementwise.arithmetic(x, y, op: "Mod",
            float: { fmod ? Foundation.fmod($0, $1) : floorMod($0, $1) },
            integer: { fmod ? ($1 == 0 ? 0 : $0 % $1) : Math.floorMod($0, $1) },
            unsigned: { $1 == 0 ? 0 : $0 % $1 })
    }
    b.add1("BitShift") { ctx in
        let direction = try ctx.attributes.string("direction", "")
        guard direction == "LEFT" || direction == "RIGHT" else { throw ctx.fail("direction must be LEFT or RIGHT, found '\(direction)'") }
        let x = try ctx.input(0)
        guard x.dataType.isInteger else { throw ctx.fail("BitShift needs integer inputs, got \(x.dataType)") }
        let width = Int64(x.dataType.byteSize * 8), signed = !x.dataType.isUnsigned
        let mask: UInt64 = width == 64 ? .max : (1 << UInt64(width)) - 1
        // Shifts outside 0..<width give 0, or -1 for a right shift of a negative signed value.
        return try Elementwise.arithmetic(x, ctx.input(1), op: "BitShift", float: { _, _ in .nan }, integer: { a, s in
            let outOfRange = s < 0 || s >= width
            if direction == "RIGHT" {
                if outOfRange { return signed && a < 0 ? -1 : 0 }
                return signed ? a >> s : Int64(bitPattern: (UInt64(bitPattern: a) & mask) >> UInt64(s))
            }
            return outOfRange ? 0 : Int64(bitPattern: (UInt64(bitPattern: a) << UInt64(s)) & mask)
        }, unsigned: { a, s in s >= UInt64(width) ? 0 : (direction == "RIGHT" ? a >> s : a << s) })
    }
    b.add1("BitwiseAnd", since: 18) { ctx in try Elementwise.bitwise(ctx.input(0), ctx.input(1), op: "BitwiseAnd", &) }
    b.add1("BitwiseOr", since: 18) { ctx in try Elementwise.bitwise(ctx.input(0), ctx.input(1), op: "BitwiseOr", |) }
    b.add1("BitwiseXor", since: 18) { ctx in try Elementwise.bitwise(ctx.input(0), ctx.input(1), op: "BitwiseXor", ^) }
    b.add1("BitwiseNot", since: 18) { ctx in
        let x = try ctx.input(0)
        if case .uint64(let a) = x.storage { return try Tensor(shape: x.shape, storage: .uint64(a.map { ~$0 })) }
        return try Tensor(x.dataType, shape: x.shape, int64s: x.int64s.map { ~$0 })
    }
    // Variadic.
    b.add1("Sum") { ctx in try Elementwise.variadic(ctx.inputs.compactMap { $0 }, op: "Sum", float: +, integer: &+) }
    b.add1("Max") { ctx in
        try Elementwise.variadic(ctx.inputs.compactMap { $0 }, op: "Max", float: { $0.isNaN || $1.isNaN ? .nan : Swift.max($0, $1) }, integer: { Swift.max($0, $1) })
    }
    b.add1("Min") { ctx in
        try Elementwise.variadic(ctx.inputs.compactMap { $0 }, op: "Min", float: { $0.isNaN || $1.isNaN ? .nan : Swift.min($0, $1) }, integer: { Swift.min($0, $1) })
    }
    b.add1("Mean") { ctx in
        let inputs = ctx.inputs.compactMap { $0 }
        let sum = try Elementwise.variadic(inputs, op: "Mean", float: +, integer: &+)
        return try sum.mapFloating { $0 / Double(inputs.count) }
    }
    // Comparisons and logic.
    let comparisons: [(String, @Sendable (Double, Double) -> Bool, @Sendable (Int64, Int64) -> Bool)] = [
        ("Equal", { $0 == $1 }, { $0 == $1 }), ("Less", { $0 < $1 }, { $0 < $1 }), ("LessOrEqual", { $0 <= $1 }, { $0 <= $1 }),
        ("Greater", { $0 > $1 }, { $0 > $1 }), ("GreaterOrEqual", { $0 >= $1 }, { $0 >= $1 }),
    ]
    for (name, f, i) in comparisons {
        b.add1(name) { ctx in try Elementwise.compare(ctx.input(0), ctx.input(1), op: name, float: f, integer: i) }
    }
    b.add1("And") { ctx in try Elementwise.logic(ctx.input(0), ctx.input(1), op: "And") { $0 && $1 } }
    b.add1("Or") { ctx in try Elementwise.logic(ctx.input(0), ctx.input(1), op: "Or") { $0 || $1 } }
    b.add1("Xor") { ctx in try Elementwise.logic(ctx.input(0), ctx.input(1), op: "Xor") { $0 != $1 } }
    b.add1("Not") { ctx in let x = try ctx.input(0); return try Tensor(bools: x.bools.map { !$0 }, shape: x.shape) }
    b.add1("IsNaN") { ctx in let x = try ctx.input(0); return try Tensor(bools: x.doubles.map(\.isNaN), shape: x.shape) }
    b.add1("IsInf") { ctx in
        let x = try ctx.input(0)
        let pos = try ctx.attributes.int("detect_positive", 1) != 0, neg = try ctx.attributes.int("detect_negative", 1) != 0
        return try Tensor(bools: x.doubles.map { $0.isInfinite && (($0 > 0 && pos) || ($0 < 0 && neg)) }, shape: x.shape)
    }
    b.add1("Where") { ctx in try Elementwise.select(ctx.input(0), ctx.input(1), ctx.input(2)) }
    b.add1("Clip") { ctx in
        let x = try ctx.input(0)
        if ctx.opset < 11 {
            let lo = try ctx.attributes.float("min", -Float.greatestFiniteMagnitude), hi = try ctx.attributes.float("max", Float.greatestFiniteMagnitude)
            return try Elementwise.clip(x, min: .scalar(lo), max: .scalar(hi))
        }
        return try Elementwise.clip(x, min: ctx.optionalInput(1), max: ctx.optionalInput(2))
    }
    b.add1("Cast") { ctx in
        guard let to = try ctx.attributes.int("to"), let type = DataType(rawValue: Int32(clamping: to)) else {
            throw ctx.fail("attribute 'to' is missing or names an unsupported type (\(DataType.onnxName(code: Int32(clamping: (try? ctx.attributes.int("to")) ?? 0)))")
        }
        return try castValue(ctx.input(0), to: type)
    }
    b.add1("CastLike", since: 15) { ctx in try castValue(ctx.input(0), to: ctx.input(1).dataType) }
    b.add1("BitCast", since: 26) { ctx in
        let x = try ctx.input(0)
        guard let to = try ctx.attributes.int("to"), let type = DataType(rawValue: Int32(clamping: to)), type != .string, x.dataType != .string else {
            throw ctx.fail("attribute 'to' must name a non-string type")
        }
        guard type.byteSize == x.dataType.byteSize else { throw ctx.fail("\(x.dataType) and \(type) differ in width") }
        return try x.littleEndianBytes().withUnsafeBytes { try Tensor.fromLittleEndian(type, shape: x.shape, bytes: $0, name: ctx.name) }
    }
}

/// Cast with ONNX semantics, including float → narrow integer saturation rules of the reference.
func castValue(_ x: Tensor, to type: DataType) throws -> Tensor {
    try x.cast(to: type)
}
