import AnvilCore
import AnvilKernels

/// A layer's decision in the GRAPH section: a presence byte (0: none, for the layers
/// of control-flow bodies, which the interpreter runs; 1: a decision; 2: a decision whose
/// output precision follows as one more code after the precision), then the kernel kind, the
/// algorithm, the layout and the precision as one-byte codes, a post-op flags byte
/// (bit 0 bias, bit 1 residual sum, bit 2 activation, bit 3 the sum after the activation), the activation's code and its
/// two parameters as 32-bit floats, and the slow-path reason (length-prefixed, empty
/// for none).
extension EngineCodec.Writer {
    mutating func decision(_ d: LayerDecision?) {
        guard let d else { u8(0); return }
        u8(d.outputPrecision == nil ? 1 : 2)
        for code in [d.kernel.rawValue, d.algorithm.rawValue, d.layout.rawValue, d.precision.rawValue] { u8(code) }
        if let output = d.outputPrecision { u8(output.rawValue) }
        let p = d.postOps
        u8((p.bias ? 1 : 0) | (p.residual ? 2 : 0) | (p.activation != nil ? 4 : 0) | (p.residualAfterActivation ? 8 : 0))
        let a = p.activation?.code ?? (kind: 0, alpha: 0, beta: 0)
        u8(a.kind)
        u64(UInt64(a.alpha.bitPattern))
        u64(UInt64(a.beta.bitPattern))
        string(d.slowPathReason ?? "")
    }
}

extension EngineCodec.Reader {
    mutating func decision(layer: String) throws -> LayerDecision? {
        let marker = try u8()
        switch marker {
        case 0: return nil
        case 1, 2: break
        default: throw fail("layer '\(layer)': unknown decision marker at byte \(position - 1)")
        }
        func code<T: RawRepresentable>(_ what: String, _ type: T.Type) throws -> T where T.RawValue == UInt8 {
            let raw = try u8()
            guard let value = T(rawValue: raw) else { throw fail("layer '\(layer)': unknown \(what) code \(raw)") }
            return value
        }
        let kernel = try code("kernel kind", KernelKind.self), algorithm = try code("algorithm", Algorithm.self)
        let layout = try code("layout", Layout.self), precision = try code("precision", Precision.self)
        let output = marker == 2 ? try code("output precision", Precision.self) : nil
        let flags = try u8()
        guard flags & ~15 == 0 else { throw fail("layer '\(layer)': unknown post-op flags \(flags)") }
        let kind = try u8()
        let alpha = Float(bitPattern: UInt32(truncatingIfNeeded: try u64())), beta = Float(bitPattern: UInt32(truncatingIfNeeded: try u64()))
        var activation: Activation?
        if flags & 4 != 0 {
            guard let a = Activation(code: kind, alpha: alpha, beta: beta) else { throw fail("layer '\(layer)': unknown activation code \(kind)") }
            activation = a
        }
        let reason = try string()
        return LayerDecision(kernel: kernel, algorithm: algorithm, layout: layout, precision: precision, outputPrecision: output,
                             postOps: PostOps(bias: flags & 1 != 0, residual: flags & 2 != 0, activation: activation, residualAfterActivation: flags & 8 != 0),
                             slowPathReason: reason.isEmpty ? nil : reason)
    }
}
