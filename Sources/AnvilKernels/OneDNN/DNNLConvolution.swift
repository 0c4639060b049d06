import AnvilCore
import COneDNN

/// A oneDNN convolution (1-D, 2-D or 3-D, grouped, dilated) with bias, residual
/// sum and activation fused as post-ops. Weights are reordered once, at creation,
/// into the layout the chosen implementation prefers.
public final class DNNLConvolution {
    /// The oneDNN implementation chosen ("brg:avx512_core", "jit:avx512_core" …).
    public var implementation: String { kernel.implementation }
    public private(set) var outputShape: [Int]
    let kernel: DNNLWeightedPrimitive
    /// The layouts of the input and output tensors (at their shapes, which for a
    /// one-wide convolution run as 1-D are not the primitive's own).
    private(set) var sourceLayout: dnnl_memory_desc_t
    private(set) var destinationLayout: dnnl_memory_desc_t

    /// Builds the primitive for one input shape.
    public convenience init(engine: DNNLEngine, inputShape: [Int], weights: Tensor, bias: Tensor?, geometry g: WindowGeometry,
                            group: Int, activation: Activation?, exactNonFinite: Bool = true, residual: Bool,
                            tactic: ConvolutionTactic = ConvolutionTactic(layout: .plain), precision: Precision = .fp32) throws {
        try self.init(engine: engine, inputShape: inputShape, weights: KernelWeights(weights), bias: bias, geometry: g, group: group,
                      activation: activation, exactNonFinite: exactNonFinite, residual: residual, tactic: tactic, precision: precision)
    }

    /// Builds the primitive for one input shape, using prepacked weights in place when one fits.
    ///
    /// A 2-D convolution whose input, kernel and output are one wide ([N, C, H, 1] with a
    /// k×1 kernel, as TensorFlow exports 1-D convolutions) runs as the 1-D convolution
    /// over H: the same bytes in every channel layout, and oneDNN's kernels vectorize
    /// along the last spatial dimension, which a width of 1 starves.
    public convenience init(engine: DNNLEngine, inputShape: [Int], weights: KernelWeights, bias: Tensor?, geometry g: WindowGeometry,
                            group: Int, activation: Activation?, exactNonFinite: Bool = true, residual: Bool,
                            tactic: ConvolutionTactic = ConvolutionTactic(layout: .plain), precision: Precision = .fp32, floatOutput: Bool = false,
                            residualAfterActivation: Bool = false, quantization: DNNLQuantization? = nil) throws {
        let residual: (Bool, after: Bool) = (residual, residualAfterActivation)
        if let squeezed = try? DNNLConvolution(squeezingWidthOf: inputShape, engine: engine, weights: weights, bias: bias, geometry: g, group: group,
                                               activation: activation, exactNonFinite: exactNonFinite, residual: residual, tactic: tactic,
                                               precision: precision, floatOutput: floatOutput, quantization: quantization) {
            self.init(squeezed)
        } else {
            try self.init(engine: engine, shape: inputShape, weights: weights, bias: bias, geometry: g, group: group,
                          activation: activation, exactNonFinite: exactNonFinite, residual: residual, tactic: tactic, precision: precision,
                          floatOutput: floatOutput, quantization: quantization)
        }
    }

    private init(_ other: DNNLConvolution) {
        outputShape = other.outputShape
        kernel = other.kernel
        sourceLayout = other.sourceLayout
        destinationLayout = other.destinationLayout
    }

    /// The 1-D form of a one-wide 2-D convolution (see above), its layouts described at
    /// the 2-D shapes; nil (or an error) when the convolution is not one wide or a
    /// layout has no 2-D equivalent.
    private convenience init?(squeezingWidthOf inputShape: [Int], engine: DNNLEngine, weights: KernelWeights, bias: Tensor?, geometry g: WindowGeometry,
                              group: Int, activation: Activation?, exactNonFinite: Bool, residual: (Bool, after: Bool), tactic: ConvolutionTactic,
                              precision: Precision, floatOutput: Bool, quantization: DNNLQuantization?) throws {
        guard inputShape.count == 4, inputShape[3] == 1, weights.rank == 4, weights.shape[3] == 1, g.output.count == 2, g.output[1] == 1,
              g.padsBegin.count == 2, g.padsBegin[1] == 0, g.padsEnd.count == 2, g.padsEnd[1] == 0, tactic.algorithm == .direct else { return nil }
        let narrow = KernelWeights(name: weights.name, dataType: weights.dataType, shape: Array(weights.shape.prefix(3)), packed: weights.packed,
                                   exact: weights.exact) { try weights.plain().reshaped(Array(weights.shape.prefix(3))) }
        var line = g
        (line.kernel, line.strides, line.dilations) = ([g.kernel[0]], [g.strides[0]], [g.dilations[0]])
        (line.padsBegin, line.padsEnd, line.output) = ([g.padsBegin[0]], [g.padsEnd[0]], [g.output[0]])
        try self.init(engine: engine, shape: Array(inputShape.prefix(3)), weights: narrow, bias: bias, geometry: line, group: group,
                      activation: activation, exactNonFinite: exactNonFinite, residual: residual, tactic: tactic, precision: precision,
                      floatOutput: floatOutput, quantization: quantization)
        // The same layouts one dimension wider.
        guard let source = try Layout.restated(sourceLayout, shape: Array(inputShape.prefix(3)), as: inputShape),
              let destination = try Layout.restated(destinationLayout, shape: outputShape, as: outputShape + [1]) else { return nil }
        outputShape += [1]
        sourceLayout = source
        destinationLayout = destination
    }

    private init(engine: DNNLEngine, shape inputShape: [Int], weights: KernelWeights, bias: Tensor?, geometry g: WindowGeometry,
                 group: Int, activation: Activation?, exactNonFinite: Bool, residual: (Bool, after: Bool), tactic: ConvolutionTactic,
                 precision: Precision, floatOutput: Bool, quantization: DNNLQuantization?) throws {
        let spatial = inputShape.count - 2
        // BF16: activations and weights in BF16 (the output too, unless `floatOutput`), the bias and
        // the accumulation in FP32. INT8: 8-bit activations (the quantization's types), s8 weights,
        // FP32 bias in accumulator units.
        let (sourceType, weightType, destinationType) = try DNNLQuantization.types(precision, quantization, floatBF16Result: floatOutput, what: "convolution")
        guard (1...3).contains(spatial), weights.rank == inputShape.count, group > 0,
              inputShape[1] % group == 0, inputShape[1] / group == weights.shape[1], weights.shape[0] % group == 0 else {
            throw AnvilError.invalidTensor(name: "Conv", reason: "weights \(weights.shape) do not fit input \(inputShape) with group \(group)")
        }
        let cout = weights.shape[0]
        outputShape = [inputShape[0], cout] + g.output
        guard g.output.count == spatial, ShapeMath.elementCount(outputShape) != nil, ShapeMath.elementCount(inputShape) != nil else {
            throw AnvilError.invalidTensor(name: "Conv", reason: "output \(outputShape) of input \(inputShape) is impossible")
        }
        // Sizes a damaged or hostile engine may hold: refused before oneDNN is asked for a kernel.
        _ = try MemoryPolicy.checkedCount(outputShape, .float, for: "the convolution's output")
        _ = try MemoryPolicy.checkedCount(weights.shape, .float, for: "the convolution's weights")
        // oneDNN 2.6 sizes some of a kernel's own tables by the row width (about 512 bytes per
        // output column, made again for each implementation it considers: a fuzzed engine 2 million
        // columns wide made it allocate 4 GB under a 256 MB limit). Counted as 1 KiB per column.
        let width = max(inputShape.last ?? 0, outputShape.last ?? 0)
        try MemoryPolicy.check(MemoryPolicy.total([(width, 1024)]), for: "oneDNN's working memory for a convolution \(width) wide")
        let winograd = tactic.algorithm == .winograd
        // A layout outside the vocabulary cannot be asked for: oneDNN's choice then.
        let tag = tactic.layout == .plain ? [dnnl_ncw, dnnl_nchw, dnnl_ncdhw][spatial - 1] : tactic.layout.formatTag(rank: inputShape.count) ?? dnnl_format_tag_any
        let src = try memoryDescriptor(inputShape, tag, sourceType)
        let dst = try memoryDescriptor(outputShape, tag, destinationType)
        // Grouped weights are [g, cout/g, cin/g, k…]: the same bytes as ONNX's [cout, cin/g, k…].
        let weightDims = group > 1 ? [group, cout / group] + Array(weights.shape.dropFirst()) : weights.shape
        let userTags: [dnnl_format_tag_t] = group > 1 ? [dnnl_goiw, dnnl_goihw, dnnl_goidhw] : [dnnl_oiw, dnnl_oihw, dnnl_oidhw]
        let userWeights = try memoryDescriptor(weightDims, userTags[spatial - 1])
        var anyWeights = try memoryDescriptor(weightDims, dnnl_format_tag_any, weightType)
        var biasDesc = try memoryDescriptor([cout], dnnl_x)
        var srcDesc = src, dstDesc = dst
        var desc = dnnl_convolution_desc_t()
        let s = g.strides.map { Int64($0) }, d = g.dilations.map { Int64($0) }
        let pb = g.padsBegin.map { Int64($0) }, pe = g.padsEnd.map { Int64($0) }
        try check(anvil_dnnl_conv_desc(&desc, &srcDesc, &anyWeights, &biasDesc, &dstDesc, Int32(spatial), s, d, pb, pe, winograd ? 1 : 0), "describing the convolution")
        let biasValues = bias?.floats ?? Array(repeating: 0, count: cout), count = outputShape.reduce(1, *)
        func make(separately: Bool) throws -> DNNLWeightedPrimitive {
            try DNNLWeightedPrimitive(desc, what: "convolution", engine: engine, activation: activation, exactNonFinite: exactNonFinite,
                                      separateActivation: separately, residual: residual.0, residualAfterActivation: residual.after,
                                      reducedPrecision: precision != .fp32,
                                      quantization: quantization, weights: weights,
                                      userWeights: userWeights, bias: biasValues, biasDescriptor: biasDesc, outputCount: count)
        }
        do {
            kernel = try make(separately: false)
        } catch where winograd && activation != nil {
            // Winograd without the activation, which then runs in place on the output.
            kernel = try make(separately: true)
        }
        sourceLayout = kernel.primitive.query(dnnl_query_src_md)
        destinationLayout = kernel.primitive.query(dnnl_query_dst_md)
    }

    /// The layout the primitive reads its input in (at the input's shape).
    public var inputDescriptor: DNNLLayout { DNNLLayout(sourceLayout) }
    /// The layout the primitive writes its output in (at the output's shape).
    public var outputDescriptor: DNNLLayout { DNNLLayout(destinationLayout) }

    /// Runs on `stream`. With a residual, `residual` is added before the activation.
    public func run(stream: DNNLStream, input: UnsafePointer<Float>, residual: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>) throws {
        try kernel.run(stream: stream, input: input, residual: residual, output: output, what: "Conv")
    }

    /// Runs on buffers already in the primitive's layouts; with a residual, `output`
    /// must already hold it (the sum post-op accumulates into the destination).
    func runInPlace(stream: DNNLStream, input: UnsafeMutableRawPointer, output: UnsafeMutableRawPointer) throws {
        try kernel.execute(stream: stream, input: input, output: output)
    }

    /// Convenience: runs on tensors (allocates the output).
    public func run(stream: DNNLStream, _ x: Tensor, residual: Tensor? = nil) throws -> Tensor {
        try kernel.run(stream: stream, x, residual: residual, outputShape: outputShape, what: "Conv")
    }
}

/// A oneDNN deconvolution (ONNX ConvTranspose, 1-D to 3-D, grouped, dilated) with
/// its bias; weights prepacked at creation. Output sizes and padding are given
/// explicitly (the planner takes them from the build-time shapes).
final class DNNLDeconvolution {
    let outputShape: [Int]
    let kernel: DNNLWeightedPrimitive

    /// `weights` is ONNX's [Cin, Cout/group, k…]; `padsEnd` may not be negative.
    init(engine: DNNLEngine, inputShape: [Int], weights: KernelWeights, bias: Tensor?, outputShape: [Int], strides: [Int], dilations: [Int],
         padsBegin: [Int], padsEnd: [Int], group: Int) throws {
        let spatial = inputShape.count - 2
        guard (1...3).contains(spatial), weights.rank == inputShape.count, group > 0, weights.shape[0] == inputShape[1],
              inputShape[1] % group == 0, outputShape[1] % group == 0, outputShape[1] / group == weights.shape[1], padsEnd.allSatisfy({ $0 >= 0 }) else {
            throw AnvilError.invalidTensor(name: "oneDNN", reason: "ConvTranspose weights \(weights.shape) do not fit input \(inputShape)")
        }
        self.outputShape = outputShape
        let cout = outputShape[1], cin = inputShape[1]
        var src = try memoryDescriptor(inputShape, dnnl_format_tag_any)
        var dst = try memoryDescriptor(outputShape, dnnl_format_tag_any)
        // ONNX's [Cin, Cout/g, k…] is oneDNN's "iohw" (grouped: [g, Cout/g, Cin/g, k…] read as "giohw").
        let kernelDims = Array(weights.shape[2...])
        let weightDims = group > 1 ? [group, cout / group, cin / group] + kernelDims : [cout, cin] + kernelDims
        let userTags: [dnnl_format_tag_t] = group > 1 ? [dnnl_acbd, dnnl_giohw, dnnl_giodhw] : [dnnl_bac, dnnl_iohw, dnnl_iodhw]
        let userWeights = try memoryDescriptor(weightDims, userTags[spatial - 1])
        var anyWeights = try memoryDescriptor(weightDims, dnnl_format_tag_any)
        var biasDesc = try memoryDescriptor([cout], dnnl_x)
        var desc = dnnl_deconvolution_desc_t()
        try check(anvil_dnnl_deconv_desc(&desc, &src, &anyWeights, &biasDesc, &dst, Int32(spatial), strides.map { Int64($0) }, dilations.map { Int64($0) },
                                         padsBegin.map { Int64($0) }, padsEnd.map { Int64($0) }), "describing the deconvolution")
        kernel = try DNNLWeightedPrimitive(desc, what: "deconvolution", engine: engine, activation: nil, residual: false,
                                           weights: weights, userWeights: userWeights,
                                           bias: bias?.floats ?? Array(repeating: 0, count: cout), biasDescriptor: biasDesc,
                                           outputCount: outputShape.reduce(1, *))
    }
}
