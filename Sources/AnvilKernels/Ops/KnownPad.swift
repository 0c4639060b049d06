import AnvilCore

/// A Pad whose mode, amounts and value are known before it runs, read the way
/// every opset writes them: attributes `pads` (or Pad-1's `paddings`) and `value` before
/// opset 11, constant inputs `pads` and `constant_value` from 11, and the `axes` input
/// from 18. Used by the Pad lowering and by the pass that folds a Pad into a Conv.
public struct KnownPad: Equatable {
    /// Amounts over all axes, begins then ends (negative ones crop).
    public var pads: [Int]
    /// The fill value.
    public var value: Double

    /// The mode: constant, reflect, edge or wrap.
    public var mode = "constant"

    /// Nil when the mode is not one of `modes` or the amounts, value or axes are not
    /// constants. `input(i)` gives the constant at input `i`, nil when absent or computed.
    public init?(opset: Int, attributes a: AttributeReader, rank: Int, present: (Int) -> Bool, input: (Int) -> Tensor?,
                 modes: Set<String> = ["constant"]) throws {
        let mode = try a.string("mode", "constant")
        guard modes.contains(mode) else { return nil }
        self.mode = mode
        var value = 0.0
        var pads: [Int]
        if opset < 11 {
            guard let p = try a.ints("pads") ?? a.ints("paddings") else { return nil }
            pads = p
            value = Double(try a.float("value", 0))
        } else {
            guard let p = input(1) else { return nil }
            pads = p.int64s.map { Int($0) }
            if present(2) {
                guard let c = input(2), c.count == 1 else { return nil }
                value = c.double(at: 0)
            }
            if present(3) {
                guard let axesTensor = input(3) else { return nil }
                let axes = axesTensor.int64s.map { ShapeMath.normalizeAxis(Int($0), rank: rank) }
                guard axes.allSatisfy({ $0 != nil }), pads.count == 2 * axes.count else { return nil }
                var full = Array(repeating: 0, count: 2 * rank)
                for (k, axis) in axes.enumerated() { full[axis!] = pads[k]; full[rank + axis!] = pads[axes.count + k] }
                pads = full
            }
        }
        guard pads.count == 2 * rank else { return nil }
        (self.pads, self.value) = (pads, value)
    }
}
