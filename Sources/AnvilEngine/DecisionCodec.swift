import AnvilCore
import AnvilKernels

/// A layer's decision in the GRAPH section: a presence byte (0: none, for the layers
/// of control-flow bodies, which the interpreter runs), then the kernel kind, the
/// algorithm, the layout and the precision as one-byte codes, a post-op flags byte
/// (bit 0 bias, bit 1 residual sum, bit 2 activation), the activation's code and its
/// two parameters as 32-bit floats, and the slow-path reason (length-prefixed, empty
/// for none).
extension EngineCodec.Writer {
    mutating func decision(_ d: LayerDecision?) {
        guard let d else { u8(0); return }
        u8(1)
        for code in [d.kernel.rawValue, d.algorithm.rawValue, d.layout.rawValue, d.precision.rawValue] { u8(code) }
        let p = d.postOps
        u8((p.bias ? 1 : 0) | (p.residual ? 2 : 0) | (p.activation != nil ? 4 : 0))
        let a = p.activation?.code ?? (kind: 0, alpha: 0, beta: 0)
        u8(a.kind)
        u64(UInt64(a.alpha.bitPattern))
        u64(UInt64(a.beta.bitPattern))
        string(d.slowPathReason ?? "")
    }
}

extension EngineCodec.Reader {
    mutating func decision(layer: String) throws -> LayerDecision? {
        switch try u8() {
        case 0: return nil
        case 1: break
        default: throw fail("layer '\(layer)': unknown decision marker at byte \(position - 1)")
        }
        func code<T: RawRepresentable>(_ what: String, _ type: T.Type) throws -> T where T.RawValue == UInt8 {
            let raw = try u8()
            guard let value = T(rawValue: raw) else { throw fail("layer '\(layer)': unknown \(what) code \(raw)") }
            return value
        }
        let kernel = try code("kernel kind", KernelKind.self), algorithm = try code("algorithm", Algorithm.self)
        let layout = try code("layout", Layout.self), precision = try code("precision", Precision.self)
        let flags = try u8()
        guard flags & ~7 == 0 else { throw fail("layer '\(layer)': unknown post-op flags \(flags)") }
        let kind = try u8()
        let alpha = Float(bitPattern: UInt32(truncatingIfNeeded: try u64())), beta = Float(bitPattern: UInt32(truncatingIfNeeded: try u64()))
        var activation: Activation?
        if flags & 4 != 0 {
            guard let a = Activation(code: kind, alpha: alpha, beta: beta) else { throw fail("layer '\(layer)': unknown activation code \(kind)") }
            activation = a
        }
        let reason = try string()
        return LayerDecision(kernel: kernel, algorithm: algorithm, layout: layout, precision: precision,
                             postOps: PostOps(bias: flags & 1 != 0, residual: flags & 2 != 0, activation: activation),
                             slowPathReason: reason.isEmpty ? nil : reason)
    }
}
