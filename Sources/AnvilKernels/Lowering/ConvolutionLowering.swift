import AnvilCore
import COneDNN

/// A convolution tactic: the activation layout and oneDNN's algorithm.
public struct ConvolutionTactic: Hashable, Sendable, CustomStringConvertible {
    public let layout: Layout
    public let algorithm: Algorithm

    public init(layout: Layout, algorithm: Algorithm = .direct) {
        // oneDNN's Winograd kernels choose their own (blocked) layout.
        self.layout = algorithm == .winograd ? .preferred : layout
        self.algorithm = algorithm
    }

    public var description: String { algorithm == .winograd ? "winograd" : layout.description }

    /// Which of equally fast tactics to take: oneDNN's own choice first, Winograd (which
    /// rounds differently from direct convolution) last.
    public var preference: Int {
        if algorithm == .winograd { return 4 }
        switch layout {
        case .preferred: return 0
        case .blocked16: return 1
        case .channelsLast: return 2
        default: return 3
        }
    }

    /// The candidates for a convolution: every direct layout, and Winograd where oneDNN may offer it.
    public static func candidates(kernel: [Int], strides: [Int], dilations: [Int], group: Int) -> [ConvolutionTactic] {
        let direct = [Layout.plain, .preferred, .channelsLast, .blocked16].map { ConvolutionTactic(layout: $0) }
        let winogradShape = kernel == [3, 3] && strides == [1, 1] && dilations == [1, 1] && group == 1
        return direct + (winogradShape ? [ConvolutionTactic(layout: .preferred, algorithm: .winograd)] : [])
    }
}

/// A convolution layer (Conv, FusedConv) for one input shape: the one place that
/// decides whether oneDNN's convolution takes a layer, used by tactic timing, the
/// planner and the interpreter alike.
struct ConvolutionSpec {
    let layer: String
    let inputShape: [Int]
    let weights: KernelWeights
    let bias: Tensor?
    let geometry: WindowGeometry
    /// Spatial kernel size.
    let kernel: [Int]
    let group: Int
    let postOps: PostOps
    /// Whether a fused ReLU or Clip must keep NaN (`DNNLAttributes.clip`); the planner
    /// clears it where no NaN can reach the layer.
    var exactNonFinite = true
    /// FP32; BF16 (activations and weights; bias and accumulation FP32) or FP16 (weights stored
    /// in FP16, arithmetic in FP32: `Precision.arithmetic`) when the decision asks for it.
    var precision: Precision = .fp32
    /// The output type --layerOutputTypes set (a BF16 convolution writing FP32); nil: the precision's.
    var outputPrecision: Precision?
    /// Whether a BF16 convolution writes FP32.
    var floatOutput: Bool { precision == .bf16 && outputPrecision == .fp32 }

    /// Nil when oneDNN's convolution does not take the layer with this input shape:
    /// not a convolution, weights or bias not constant float, shapes that do not fit.
    init?(_ layer: Layer, constants: ConstantStore, inputShape: [Int]) throws {
        guard layer.opKey == "Conv" || layer.opKey == "anvil.FusedConv", layer.present(1), let w = constants.weights(layer.inputs[1]),
              w.dataType == .float, w.rank == inputShape.count, (3...5).contains(w.rank) else { return nil }
        if layer.present(2) {
            guard let b = constants[layer.inputs[2]], b.dataType == .float else { return nil }
            bias = b
        } else {
            bias = nil
        }
        let context = layer.evalContext
        let attrs = try WindowAttributes(context)
        kernel = attrs.kernelShape ?? Array(w.shape[2...])
        geometry = try attrs.geometry(context, input: Array(inputShape[2...]), kernel: kernel)
        // Divided, not multiplied: a hostile group would overflow the product.
        guard geometry.output.allSatisfy({ $0 > 0 }), attrs.group > 0, inputShape[1] % attrs.group == 0, inputShape[1] / attrs.group == w.shape[1] else { return nil }
        self.layer = layer.name
        self.inputShape = inputShape
        weights = w
        group = attrs.group
        postOps = try layer.decision.flatMap { $0.kernel == .convolution ? $0.postOps : nil } ?? PostOps(layer)
        if let d = layer.decision, d.kernel == .convolution, d.precision == .bf16 || d.precision == .fp16 { (precision, outputPrecision) = (d.precision, d.outputPrecision) }
    }

    /// What decides its timing: shapes, window, group, fused work.
    var timingKey: String {
        let g = geometry
        return "x\(inputShape)w\(weights.shape)g\(group)s\(g.strides)d\(g.dilations)p\(g.padsBegin)\(g.padsEnd)"
            + "b\(postOps.bias ? 1 : 0)a\(postOps.activation.map { "\($0)" } ?? "-")r\(postOps.residual ? (postOps.residualAfterActivation ? 2 : 1) : 0)"
            + (precision.arithmetic == .fp32 ? "" : "p\(precision.arithmetic)") + (floatOutput ? "oFP32" : "")
    }

    /// The key under which contexts share the kernel of a tactic.
    func sharingKey(_ tactic: ConvolutionTactic) -> String {
        "conv|\(layer)|\(inputShape)|\(tactic.layout.rawValue)|\(tactic.algorithm.rawValue)|\(precision.rawValue)" + (exactActivation ? "|exact" : "")
            + (floatOutput ? "|f32out" : "")
    }

    /// Whether the fused activation takes its NaN-keeping form.
    var exactActivation: Bool { exactNonFinite && DNNLAttributes.hasFiniteForm(postOps.activation) }

    func make(_ tactic: ConvolutionTactic, engine: DNNLEngine) throws -> DNNLConvolution {
        try DNNLConvolution(engine: engine, inputShape: inputShape, weights: precision == .fp16 ? weights.halved() : weights, bias: bias, geometry: geometry,
                            group: group, activation: postOps.activation, exactNonFinite: exactActivation, residual: postOps.residual, tactic: tactic,
                            precision: precision.arithmetic, floatOutput: floatOutput, residualAfterActivation: postOps.residualAfterActivation)
    }
}

/// Convolutions and transposed convolutions on oneDNN, with bias, residual sum and
/// activation as post-ops and weights prepacked (shared by every context).
enum ConvolutionLowering {
    static let entries = [
        LoweringEntry(kind: .convolution, ops: ["Conv", "anvil.FusedConv"], output: .plain, lower: convolution, prepare: prepare),
        LoweringEntry(kind: .deconvolution, ops: ["ConvTranspose"], output: .plain, lower: deconvolution),
    ]

    /// The tactic of a layer: its decision's, else oneDNN's preferred layout.
    static func tactic(_ layer: Layer) -> ConvolutionTactic {
        guard let d = layer.decision, d.kernel == .convolution else { return ConvolutionTactic(layout: .preferred) }
        return ConvolutionTactic(layout: d.layout, algorithm: d.algorithm)
    }

    static func prepare(_ l: LayerLowering, inputShape: [Int]) -> (() throws -> Void)? {
        guard var spec = try? ConvolutionSpec(l.layer, constants: l.plan.constants, inputShape: inputShape) else { return nil }
        spec.exactNonFinite = l.plan.exactNonFinite(l.layer)
        let tactic = tactic(l.layer), engine = l.plan.engine, shared = l.plan.shared
        return { _ = try shared.kernel(spec.sharingKey(tactic), layer: spec.layer) { try spec.make(tactic, engine: engine) } }
    }

    static func convolution(_ l: LayerLowering) throws -> LayerDecision? {
        // Read as stored: a BF16 input feeds a BF16 convolution without a reorder (and an FP32
        // one through a reorder into its layout, which converts).
        guard let x = l.storedValue(0), x.dataType == .float, var spec = try ConvolutionSpec(l.layer, constants: l.plan.constants, inputShape: x.shape) else {
            return nil
        }
        spec.exactNonFinite = l.plan.exactNonFinite(l.layer)
        let residualValue = l.present(3) ? l.storedValue(3) : nil
        if l.present(3) && residualValue == nil { return nil }
        // The decided tactic; where oneDNN has only its reference implementation for it
        // (these shapes were not timed), the other tactics in turn.
        let decided = tactic(l.layer), engine = l.plan.engine
        let tactics = [decided] + ConvolutionTactic.candidates(kernel: spec.kernel, strides: spec.geometry.strides, dilations: spec.geometry.dilations,
                                                               group: spec.group).filter { $0 != decided }
        var made: (ConvolutionTactic, DNNLConvolution)?
        for candidate in tactics {
            guard let conv = try? l.plan.shared.kernel(spec.sharingKey(candidate), layer: spec.layer, make: { try spec.make(candidate, engine: engine) }),
                  !conv.kernel.primitive.isReference else { continue }
            made = (candidate, conv)
            break
        }
        guard let (tactic, conv) = made else {
            throw SlowImplementation(kind: .convolution, implementation: try spec.make(decided, engine: engine).implementation)
        }
        // The values' layouts are at their shapes; the primitive reads and writes through its own
        // descriptors (1-D ones for a one-wide convolution, `DNNLConvolution`), the same bytes.
        let src = try l.plan.inLayout(x, conv.inputDescriptor.descriptor)
        let dstLayout = conv.outputDescriptor.descriptor
        let (out, copies) = try residualValue.map { try l.residualDestination($0, layout: dstLayout, notSharing: src) }
            ?? (l.plan.newValue(l.layer.outputs[0], .float, conv.outputShape, layout: dstLayout), [])
        for step in try conv.kernel.planSteps(layer: l.layer.name, source: src, destination: out, copies: copies) { try l.emit(.convolution, step) }
        // The decision keeps the requested layout: "preferred" stays oneDNN's choice on every CPU and shape.
        return LayerDecision(kernel: .convolution, algorithm: tactic.algorithm, layout: tactic.layout, precision: spec.precision,
                             outputPrecision: spec.outputPrecision, postOps: spec.postOps)
    }

    /// ConvTranspose with explicit (or no) pads on oneDNN's deconvolution; the
    /// output size comes from the build-time shapes, the end padding absorbs output_padding.
    static func deconvolution(_ l: LayerLowering) throws -> LayerDecision? {
        guard let x = l.value(0), x.dataType == .float, (3...5).contains(x.shape.count), let w = l.weights(1), w.dataType == .float,
              w.rank == x.shape.count, !l.present(2) || l.isConstant(2) else { return nil }
        let a = l.attributes
        let n = x.shape.count - 2
        guard try a.string("auto_pad", "NOTSET") == "NOTSET" || (try a.string("auto_pad", "NOTSET")) == "VALID", !a.has("output_shape") else { return nil }
        let (_, outShape) = try l.outputType()
        let group = try a.int("group", 1)
        let kernel = try a.ints("kernel_shape") ?? Array(w.shape[2...])
        let strides = try a.ints("strides") ?? Array(repeating: 1, count: n), dilations = try a.ints("dilations") ?? Array(repeating: 1, count: n)
        let pads = try a.ints("pads") ?? Array(repeating: 0, count: 2 * n)
        guard kernel.count == n, strides.count == n, dilations.count == n, pads.count == 2 * n, outShape.count == x.shape.count else { return nil }
        let padsBegin = Array(pads[..<n])
        var padsEnd: [Int] = []
        for i in 0..<n {
            let span: Int = (kernel[i] - 1) * dilations[i] + 1
            let full: Int = strides[i] * (x.shape[i + 2] - 1) + span
            padsEnd.append(full - outShape[i + 2] - padsBegin[i])
        }
        guard padsEnd.allSatisfy({ $0 >= 0 }) else { return nil }
        let bias = l.constant(2), engine = l.plan.engine
        if group == 1, kernel == strides, dilations.allSatisfy({ $0 == 1 }), pads.allSatisfy({ $0 == 0 }), padsEnd.allSatisfy({ $0 == 0 }),
           let decision = try patchDeconvolution(l, x: x, weights: w, bias: bias, kernel: kernel, outShape: outShape) {
            return decision
        }
        let deconv = try l.plan.shared.kernel("deconv|\(l.layer.name)|\(x.shape)", layer: l.layer.name) {
            try DNNLDeconvolution(engine: engine, inputShape: x.shape, weights: w, bias: bias, outputShape: outShape, strides: strides,
                                  dilations: dilations, padsBegin: padsBegin, padsEnd: padsEnd, group: group)
        }
        let primitive = deconv.kernel.primitive
        let src = try l.plan.inLayout(x, primitive.query(dnnl_query_src_md))
        let dstLayout = primitive.query(dnnl_query_dst_md)
        let out = l.plan.newValue(l.layer.outputs[0], .float, outShape, layout: dstLayout)
        try l.emit(.deconvolution, PrimitiveStep(layer: l.layer.name, primitive: primitive,
                                                 arguments: [(DNNL_ARG_SRC, src, primitive.query(dnnl_query_src_md)), (DNNL_ARG_DST, out, dstLayout)],
                                                 fixed: try deconv.kernel.constantArguments()))
        return l.decided(.deconvolution, postOps: PostOps(bias: bias != nil))
    }

    /// ConvTranspose whose kernel equals its stride (no padding, dilation, groups or
    /// output padding), as FPN and DB heads upsample: every input pixel writes its own
    /// kh×kw patch of the output. That is a 1×1 convolution to Co·kh·kw channels (ordered
    /// row, column, channel) in channels-last, then each pixel's patch rows copied into
    /// place in a channels-last output; oneDNN 2.6's deconvolution runs these 3 to 8
    /// times slower. Nil for ranks other than 4.
    static func patchDeconvolution(_ l: LayerLowering, x: PlanValue, weights w: KernelWeights, bias: Tensor?, kernel: [Int],
                                   outShape: [Int]) throws -> LayerDecision? {
        guard x.shape.count == 4, kernel.count == 2, w.rank == 4, w.shape[0] == x.shape[1] else { return nil }
        let (n, ci, h, width) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let co = w.shape[1], (kh, kw) = (kernel[0], kernel[1]), channels = co * kh * kw
        guard outShape == [n, co, h * kh, width * kw], channels > 0 else { return nil }
        let engine = l.plan.engine
        let conv = try l.plan.shared.kernel("patchdeconv|\(l.layer.name)|\(x.shape)", layer: l.layer.name) { () throws -> DNNLConvolution in
            // ONNX's [Ci, Co, kh, kw] as [(i, j, co), Ci, 1, 1]; the bias repeated per patch position.
            let source = try w.plain().floats, b = bias?.floats ?? [Float](repeating: 0, count: co)
            var packed = [Float](repeating: 0, count: channels * ci)
            for c in 0..<ci {
                for o in 0..<co {
                    for i in 0..<kh {
                        for j in 0..<kw { packed[((i * kw + j) * co + o) * ci + c] = source[((c * co + o) * kh + i) * kw + j] }
                    }
                }
            }
            let geometry = try WindowGeometry(input: [h, width], kernel: [1, 1], strides: nil, dilations: nil, pads: nil, autoPad: .notSet)
            return try DNNLConvolution(engine: engine, inputShape: x.shape, weights: try Tensor(floats: packed, shape: [channels, ci, 1, 1]),
                                       bias: try Tensor(floats: (0..<channels).map { b[$0 % co] }, shape: [channels]), geometry: geometry, group: 1,
                                       activation: nil, residual: false, tactic: ConvolutionTactic(layout: .channelsLast))
        }
        guard !conv.kernel.primitive.isReference, Layout.of(conv.outputDescriptor.descriptor, shape: conv.outputShape) == .channelsLast,
              let outLayout = try Layout.channelsLast.descriptor(outShape) else { return nil }
        let primitive = conv.kernel.primitive
        let src = try l.plan.inLayout(x, conv.inputDescriptor.descriptor)
        let patches = l.plan.newValue(l.layer.name + "#patches", .float, conv.outputShape, layout: conv.outputDescriptor.descriptor)
        try l.emit(.deconvolution, PrimitiveStep(layer: l.layer.name, primitive: primitive,
                                                 arguments: [(DNNL_ARG_SRC, src, primitive.query(dnnl_query_src_md)),
                                                             (DNNL_ARG_DST, patches, primitive.query(dnnl_query_dst_md))],
                                                 fixed: try conv.kernel.constantArguments()))
        let out = l.plan.newValue(l.layer.outputs[0], .float, outShape, layout: outLayout)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [patches], writes: [out]) { p in
            SwiftKernels.placePatches(p.address(patches).assumingMemoryBound(to: Float.self), rows: n * h, width: width, kh: kh, kw: kw, channels: co,
                                      into: p.address(out).assumingMemoryBound(to: Float.self))
        })
        return l.decided(.deconvolution, postOps: PostOps(bias: bias != nil))
    }
}
