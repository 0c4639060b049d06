import AnvilCore
import AnvilEngine
import AnvilKernels

/// Which layers may compute in a reduced precision, as trtexec's --bf16, --fp16 and
/// --layerPrecisions say. FP32 unless asked: the builder never lowers precision on its
/// own. Weighted layers (convolutions, and matrix products with constant weights) take
/// BF16 under `bf16` (else FP16 under `fp16`), except the first and the last of the graph
/// (the layers that see the raw input and make the final scores are the most sensitive)
/// unless `keepEnds` is off; a layer the user names in `layerPrecisions` always takes the
/// precision given, fused layers included (named by the layer or by any ONNX node fused
/// into it).
///
/// FP16 is storage: an FP16 layer's weights are rounded to FP16 and stored so (half the
/// bytes in the engine file), and it computes in FP32 from FP32 activations: CPUs without
/// AVX-512 FP16 have no FP16 arithmetic, and oneDNN 2.6 has no FP16 kernel for them (its
/// only FP16 conversion there is the scalar reference reorder), so FP16 activations would
/// add a conversion pass before and after every layer and save nothing (docs/precision.md).
public struct PrecisionPolicy: Sendable, Equatable {
    /// BF16 convolutions and matrix products (oneDNN's AVX-512 BF16 kernels).
    public var bf16 = false
    /// INT8 convolutions and matrix products, calibrated (`Int8Quantizer`).
    public var int8 = false
    /// FP16 weight storage for convolutions and matrix products (FP32 arithmetic).
    public var fp16 = false
    /// Per layer or ONNX node name ("*": every layer), the precision it must take.
    public var layerPrecisions: [String: Precision] = [:]
    /// Per layer or ONNX node name ("*": every layer), the type its output must have (--layerOutputTypes).
    public var layerOutputTypes: [String: Precision] = [:]
    /// Whether the first and the last weighted layers stay FP32 under `bf16`.
    public var keepEnds = true

    public init(bf16: Bool = false, int8: Bool = false, fp16: Bool = false, layerPrecisions: [String: Precision] = [:], keepEnds: Bool = true) {
        self.bf16 = bf16
        self.int8 = int8
        self.fp16 = fp16
        self.layerPrecisions = layerPrecisions
        self.keepEnds = keepEnds
    }

    /// Whether every layer stays FP32.
    public var isFP32: Bool { !bf16 && !int8 && !fp16 && layerPrecisions.values.allSatisfy { $0 == .fp32 } }

    /// Whether any layer may compute in INT8 (the build then calibrates).
    public var needsInt8: Bool { int8 || layerPrecisions.values.contains(.int8) }

    /// Parses --layerPrecisions (or, with `flag`, --layerOutputTypes): "name:fp32,other:bf16";
    /// names may contain ':' and '/' (the last ':' separates); "*" names every layer, and a
    /// layer's own name (or a node fused into it) wins over "*", as in trtexec.
    public static func parseLayerPrecisions(_ specs: [String], flag: String = "--layerPrecisions") throws -> [String: Precision] {
        var out: [String: Precision] = [:]
        for spec in specs.flatMap({ $0.split(separator: ",").map(String.init) }) where !spec.isEmpty {
            guard let colon = spec.lastIndex(of: ":"), colon != spec.startIndex else {
                throw AnvilError.invalidArgument("\(flag): '\(spec)' is not name:precision")
            }
            let name = String(spec[..<colon]), word = spec[spec.index(after: colon)...].lowercased()
            guard let precision = Precision.allCases.first(where: { $0.description.lowercased() == word }) else {
                throw AnvilError.invalidArgument("\(flag): '\(word)' for '\(name)' is not a precision (fp32, bf16, fp16, int8)")
            }
            guard out[name] == nil || out[name] == precision else {
                throw AnvilError.invalidArgument("\(flag): '\(name)' is given two precisions")
            }
            out[name] = precision
        }
        return out
    }

    /// What `table` asks of a layer: under its own name or a fused node's (the last given), else
    /// under "*"; with the name that asked (added to `matched`).
    static func asked(_ table: [String: Precision], _ layer: Layer, matched: inout Set<String>) -> (Precision, name: String)? {
        matched.formUnion(([layer.name] + layer.fusedFrom).filter { table[$0] != nil })
        return asked(table, names: [layer.name] + layer.fusedFrom)
    }

    /// What `table` asks under the last of `names` it has, else under "*".
    static func asked(_ table: [String: Precision], names: [String]) -> (Precision, name: String)? {
        names.last(where: { table[$0] != nil }).map { (table[$0]!, $0) } ?? table["*"].map { ($0, "*") }
    }

    /// Decides each layer's precision and records it in its decision (a convolution taking
    /// BF16 gets a convolution decision tactic timing then completes), then the output
    /// types --layerOutputTypes sets. Throws for names that match no layer, precisions or
    /// output types no kernel of the layer offers, and BF16 on a CPU without AVX-512 BF16.
    func apply(to graph: EngineGraph, host: CPUFeatures = .host) throws {
        if isFP32 && layerOutputTypes.isEmpty { return }
        let weighted = graph.layers.indices.filter { Self.kernel(of: graph.layers[$0], graph.constants) != nil }
        // Transposed convolutions (FP32 here) count as ends too: a model ending in one keeps it,
        // not the convolution before it, in FP32.
        let weightedIndices = Set(weighted)
        let endCandidates = graph.layers.indices.filter { weightedIndices.contains($0) || graph.layers[$0].opKey == "ConvTranspose" }
        let ends: Set<Int> = keepEnds ? Set([endCandidates.first, endCandidates.last].compactMap { $0 }) : []
        var matched: Set<String> = ["*"]
        var reduced = false
        for i in weighted {
            let layer = graph.layers[i]
            var precision: Precision = ends.contains(i) ? .fp32 : bf16 ? .bf16 : fp16 ? .fp16 : .fp32
            if let (asked, name) = Self.asked(layerPrecisions, layer, matched: &matched) {
                // "*:int8" leaves the layers INT8 could not take as they were.
                guard asked != .int8 else {
                    if name == "*" { continue }
                    throw AnvilError.invalidArgument("--layerPrecisions: layer '\(layer.name)' was not quantized, so it cannot run in INT8 "
                                                     + "(INT8 needs --int8 calibration data, and its input a calibrated range)")
                }
                precision = asked
            }
            reduced = reduced || precision == .bf16
            let kind = Self.kernel(of: layer, graph.constants)!
            graph.layers[i].decision = LayerDecision(kernel: kind, layout: kind == .convolution ? .preferred : .plain, precision: precision,
                                                     postOps: try PostOps(layer))
        }
        // Names of other layers: FP32 is what they run in; anything else is not offered ("*" asks only where it can).
        let weightedSet = Set(weighted)
        for i in graph.layers.indices where !weightedSet.contains(i) {
            let layer = graph.layers[i]
            // A layer the INT8 quantizer made takes INT8 as asked.
            guard let (asked, name) = Self.asked(layerPrecisions, layer, matched: &matched), name != "*" else { continue }
            guard asked == .fp32 || (asked == .int8 && Self.isQuantized(layer)) else {
                throw AnvilError.invalidArgument("--layerPrecisions: layer '\(layer.name)' (\(layer.opType)) has no \(asked) kernel in this Anvil; "
                                                 + "only convolutions and matrix products with constant weights take BF16, FP16 or INT8")
            }
        }
        if let unknown = layerPrecisions.keys.filter({ !matched.contains($0) }).sorted().first {
            throw AnvilError.invalidArgument("--layerPrecisions: no layer or ONNX node is named '\(unknown)' (after optimization; see anvil inspect for the names)")
        }
        if reduced, !host.contains(.avx512Bf16) {
            throw AnvilError.invalidArgument("BF16 needs a CPU with AVX-512 BF16 instructions (avx512_bf16 in /proc/cpuinfo); this CPU has \(host)")
        }
        try applyOutputTypes(to: graph, weighted: weightedSet)
    }

    /// --layerOutputTypes: a BF16 convolution may write FP32 (its default is BF16), a BF16 matrix
    /// product without a residual sum may write BF16 (its default is FP32); every other layer
    /// writes the type it computes (INT8 layers of a calibrated build chose theirs in
    /// `Int8Quantizer`; an explicitly quantized model's are the model's), which may be asked
    /// for and nothing else. FP16 activations do not exist here (FP16 is weight storage).
    func applyOutputTypes(to graph: EngineGraph, weighted: Set<Int>) throws {
        guard !layerOutputTypes.isEmpty else { return }
        var matched: Set<String> = ["*"]
        for i in graph.layers.indices {
            let layer = graph.layers[i]
            guard let (asked, name) = Self.asked(layerOutputTypes, layer, matched: &matched) else { continue }
            func refuse(_ why: String) -> AnvilError {
                AnvilError.invalidArgument("--layerOutputTypes: layer '\(layer.name)' (\(layer.opType)) cannot write \(asked): \(why)")
            }
            guard asked != .fp16 else {
                throw refuse("activations are FP32, BF16 or 8-bit in this Anvil (FP16 layers store only their weights in FP16)")
            }
            if weighted.contains(i), let d = layer.decision {
                let natural: Precision = d.precision == .bf16 ? (d.kernel == .convolution ? .bf16 : .fp32) : .fp32
                if asked == natural { continue }
                guard d.precision == .bf16, asked != .int8 else {
                    if name == "*" { continue }
                    throw refuse(asked == .int8 ? "only INT8 layers write 8 bits" : "it computes in \(d.precision) (pin it bf16 with --layerPrecisions for a BF16 output)")
                }
                if d.kernel == .matmul, d.postOps.residual {
                    if name == "*" { continue }
                    throw refuse("a BF16 matrix product sums its residual in FP32")
                }
                graph.layers[i].decision?.outputPrecision = asked
                continue
            }
            let type = layer.outputs.first.flatMap { graph.valueTypes[$0]?.elementType }
            let writes: Precision? = type == .float ? .fp32 : type == .uint8 || type == .int8 ? .int8 : nil
            guard writes != asked, name != "*" else { continue }
            throw refuse(Self.isQuantized(layer) ? "its output type is set by the model's quantization (explicit Q/DQ nodes keep theirs)"
                                                 : "it writes \(writes.map { "\($0)" } ?? type.map { "\($0)" } ?? "an untyped value")")
        }
        if let unknown = layerOutputTypes.keys.filter({ !matched.contains($0) }).sorted().first {
            throw AnvilError.invalidArgument("--layerOutputTypes: no layer or ONNX node is named '\(unknown)' (after optimization; see anvil inspect for the names)")
        }
    }

    /// Whether a layer is an INT8 convolution or matrix product (quantized by the model or by `Int8Quantizer`).
    static func isQuantized(_ layer: Layer) -> Bool {
        ["anvil.FusedQLinearConv", "anvil.FusedQLinearMatMul", "QLinearConv", "QLinearMatMul"].contains(layer.opKey)
    }

    /// Whether a layer is a convolution or a matrix product with constant weights, in FP32,
    /// BF16, FP16 or INT8 (what --bf16, --fp16 and --int8 reduce).
    public static func isWeighted(_ layer: Layer, _ constants: ConstantStore) -> Bool {
        kernel(of: layer, constants) != nil || isQuantized(layer)
    }

    /// The kernel that runs a weighted layer in a reduced precision: oneDNN's convolution, or
    /// its matmul for a product with constant 2-D float weights; nil for other layers.
    static func kernel(of layer: Layer, _ constants: ConstantStore) -> KernelKind? {
        switch layer.opKey {
        case "Conv", "anvil.FusedConv": return .convolution
        case "MatMul", "anvil.FusedMatMul", "Gemm", "anvil.FusedGemm":
            guard layer.inputs.count > 1, let w = constants.weights(layer.inputs[1]), w.dataType == .float, w.rank == 2 else { return nil }
            return .matmul
        default: return nil
        }
    }
}
