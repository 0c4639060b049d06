import AnvilCore
import AnvilIR
import AnvilKernels

// Arithmetic on symbolic dimensions shared by the inference rules: broadcasting,
// deciding Equal of shape vectors, products, Reshape's -1, and Add/Sub/Mul/Div of
// shape vectors. A symbol is a size (never negative); a size computed from sizes that
// cannot be named from them gets a fresh symbol of its own.

/// Numpy broadcasting over symbolic dims; throws when two known sizes conflict.
func broadcastDims(_ all: [[Dim]], _ ctx: InferContext) throws -> [Dim] {
    let rank = all.map(\.count).max() ?? 0
    var out = [Dim](repeating: .known(1), count: rank)
    for dims in all {
        let offset = rank - dims.count
        for (i, d) in dims.enumerated() {
            let o = out[offset + i]
            switch (o, d) {
            case (.known(1), _): out[offset + i] = d
            case (_, .known(1)): break
            case (.known(let a), .known(let b)) where a != b:
                throw ctx.fail("shapes \(all.map { "[\($0.map(\.description).joined(separator: ","))]" }.joined(separator: " and ")) cannot be broadcast together")
            case (.known, _): break
            case (_, .known): out[offset + i] = d
            case (.symbol(let a), .symbol(let b)) where a == b: break
            case (.symbol(let a), .symbol(let b)):
                // Two symbols broadcast together name one size in a valid model (neither is a
                // literal 1): exporters give each input's axes their own names.
                ctx.unify(a, b)
            default: out[offset + i] = .unknown
            }
        }
    }
    return out
}

/// Equal of two shape vectors decided element by element where it can be: known sizes
/// compare, a symbol equals itself, and a symbol (a length) never equals a negative
/// number; nil when any element is undecidable.
func decidedEquality(_ a: [Dim]?, _ b: [Dim]?) -> [Bool]? {
    guard let a, let b, a.count == b.count || a.count == 1 || b.count == 1 else { return nil }
    var result: [Bool] = []
    for i in 0..<max(a.count, b.count) {
        switch (a[a.count == 1 ? 0 : i], b[b.count == 1 ? 0 : i]) {
        case (.known(let x), .known(let y)): result.append(x == y)
        case (.symbol(let x), .symbol(let y)) where x == y: result.append(true)
        case (.symbol, .known(let k)) where k < 0, (.known(let k), .symbol) where k < 0: result.append(false)
        default: return nil
        }
    }
    return result
}

/// Throws when inputs bound to one ONNX type variable have different known element types.
func requireSameElementType(_ ctx: InferContext, _ indices: [Int]) throws {
    let types = indices.compactMap { ctx.has($0) ? ctx.type($0).elementType : nil }
    if let first = types.first, let other = types.first(where: { $0 != first }) {
        throw ctx.fail("inputs must have the same element type, got \(first) and \(other)")
    }
}

/// Product of dims: known when all are, a symbol when it is the only non-1 factor.
func product(_ dims: [Dim]) -> Dim {
    var known = 1
    var others: [Dim] = []
    for d in dims {
        if let v = d.value { known *= v } else { others.append(d) }
    }
    if others.isEmpty { return .known(known) }
    if others.count == 1, known == 1 { return others[0] }
    if known == 0 { return .known(0) }
    return .unknown
}

func facts(_ type: DataType?, _ dims: [Dim]?) -> ValueFacts { ValueFacts(type: TensorType(type, dims)) }

/// The dimension Reshape's -1 stands for: the input's dims with the other output
/// dims divided out. Equal dims (symbolic or known) cancel; what remains must be
/// all known, or one symbol once the known sizes on both sides cancel.
func inferredDimension(input: [Dim], others: [Dim]) -> Dim {
    var remaining = input
    var unmatched: [Dim] = []
    // Sizes of 1 leave the element count as it is.
    for d in others where d != .known(1) {
        if let k = remaining.firstIndex(of: d) { remaining.remove(at: k) } else { unmatched.append(d) }
    }
    let remainingKnown = remaining.allSatisfy { $0.value != nil }, unmatchedKnown = unmatched.allSatisfy { $0.value != nil }
    if remainingKnown && unmatchedKnown {
        let numerator = remaining.reduce(1) { $0 * $1.value! }, denominator = unmatched.reduce(1) { $0 * $1.value! }
        return denominator > 0 && numerator % denominator == 0 ? .known(numerator / denominator) : .unknown
    }
    // One symbol left once the known sizes cancel ([B, S, 768] to [B, -1, 12, 64] is S).
    let symbols = remaining.filter { $0.value == nil }
    if unmatchedKnown, symbols.count == 1, case .symbol = symbols[0],
       remaining.compactMap(\.value).reduce(1, *) == unmatched.reduce(1, { $0 * $1.value! }) {
        return symbols[0]
    }
    return .unknown
}

/// Same type and shape as input 0.
let sameAsInput: InferenceRule = { ctx in [ctx.input(0).type].map { ValueFacts(type: $0) } }

/// A dimension that is a size (a symbol, or a known value not below zero).
func isSize(_ d: Dim) -> Bool {
    switch d {
    case .symbol: true
    case .known(let v): v >= 0
    case .unknown: false
    }
}

/// Arithmetic on shape vectors: Add/Sub/Mul/Div of known dims stay exact.
func propagateArithmetic(_ ctx: InferContext, _ out: TensorType) -> [Dim]? {
    guard let a = ctx.input(0).dims, let b = ctx.input(1).dims, a.count == b.count || a.count == 1 || b.count == 1 else { return nil }
    let n = max(a.count, b.count)
    return (0..<n).map { i -> Dim in
        let x = a[a.count == 1 ? 0 : i], y = b[b.count == 1 ? 0 : i]
        guard let u = x.value, let v = y.value else {
            if ctx.node.opType == "Mul", y == .known(1) { return x }
            if ctx.node.opType == "Mul", x == .known(1) { return y }
            if ["Add", "Sub"].contains(ctx.node.opType), y == .known(0) { return x }
            if ctx.node.opType == "Div", y == .known(1) { return x }
            // Sums, products and quotients of sizes are sizes: a symbol of their own lets
            // a Range or Reshape of them stay named (a mask length computed as numel / batch).
            if ["Add", "Mul", "Div"].contains(ctx.node.opType), isSize(x), isSize(y), out.elementType?.isInteger == true {
                return ctx.freshSymbol()
            }
            return .unknown
        }
        switch ctx.node.opType {
        case "Add": return .known(u + v)
        case "Sub": return .known(u - v)
        case "Mul": return .known(u * v)
        default: return v != 0 ? .known(u / v) : .unknown
        }
    }
}
