import AnvilCore
import COneDNN

/// A quantized convolution layer (QLinearConv, or Anvil's FusedQLinearConv with a residual
/// sum and an activation) for one input shape: its constant parameters read and checked,
/// as oneDNN's INT8 convolution takes them. Nil when oneDNN's kernel does not take the layer
/// (parameters not constant, weights not int8 with zero points 0, other element types):
/// the reference kernel runs it then.
///
/// Inputs: x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point,
/// B (int32, in units of x_scale · w_scale), then (fused) sum, sum_scale, sum_zero_point, and
/// the convolution's own output quantization before the sum, inner_scale, inner_zero_point.
struct QuantizedConvolutionSpec {
    let layer: String
    let inputShape: [Int]
    let weights: KernelWeights
    /// The bias in accumulator units, as oneDNN adds it before the output scale.
    let bias: Tensor?
    let geometry: WindowGeometry
    let group: Int
    let activation: Activation?
    let residual: Bool
    let quantization: DNNLQuantization
    let outputType: DataType

    init?(_ layer: Layer, constants: ConstantStore, input: DataType, inputShape: [Int], residualType: DataType?) throws {
        guard layer.opKey == "QLinearConv" || layer.opKey == "anvil.FusedQLinearConv", (3...5).contains(inputShape.count), layer.present(3),
              let w = constants.weights(layer.inputs[3]), w.rank == inputShape.count,
              let p = try QuantizedLinearParameters(layer, constants: constants, input: input, weights: w, channels: w.shape[0]) else { return nil }
        bias = p.bias
        activation = p.activation
        var q = p.quantization
        residual = layer.opKey == "anvil.FusedQLinearConv" && layer.present(9)
        if residual, p.outputType == .float {
            // A float residual summed into a float result (sum_scale absent).
            guard residualType == .float, !layer.present(10), !layer.present(12) else { return nil }
        } else if residual {
            // An 8-bit residual, signed or not, summed into an 8-bit result.
            guard let r = residualType, [.uint8, .int8].contains(r), let rs = p.scales(10), let rz = p.zeroPoint(11, r) else { return nil }
            q.sumScale = Float(rs[0] / p.unitScale)
            q.sumZeroPoint = rz
            if r != p.outputType { q.sumType = r == .uint8 ? dnnl_u8 : dnnl_s8 }
            // The convolution's own output quantization before the sum (inputs 12, 13), when the model has one.
            if layer.present(12) {
                guard let inner = p.scales(12), let innerType = layer.present(13) ? constants[layer.inputs[13]]?.dataType : .uint8,
                      let range = quantRange(innerType), let z = p.zeroPoint(13, innerType),
                      let xs = p.scales(1), let ws = p.scales(4, count: w.shape[0]) else { return nil }
                q.outputScales = ws.map { Float(xs[0] * $0 / inner[0]) }
                q.intermediate = (Float(range.0) - Float(z), Float(range.1) - Float(z), Float(inner[0] / p.unitScale))
            }
        }
        let cout = w.shape[0], outputType = p.outputType
        let attrs = try WindowAttributes(layer.evalContext)
        let kernel = attrs.kernelShape ?? Array(w.shape[2...])
        geometry = try attrs.geometry(layer.evalContext, input: Array(inputShape[2...]), kernel: kernel)
        guard geometry.output.allSatisfy({ $0 > 0 }), attrs.group > 0, inputShape[1] % attrs.group == 0, inputShape[1] / attrs.group == w.shape[1],
              cout % attrs.group == 0 else { return nil }
        self.layer = layer.name
        self.inputShape = inputShape
        self.outputType = outputType
        weights = w
        group = attrs.group
        quantization = q
    }

    /// The key under which contexts share the kernel.
    var sharingKey: String { "qconv|\(layer)|\(inputShape)" }

    func make(engine: DNNLEngine) throws -> DNNLConvolution {
        // oneDNN's fast INT8 kernels (brgemm, 1×1, depthwise) read and write channels-last.
        try DNNLConvolution(engine: engine, inputShape: inputShape, weights: weights, bias: bias, geometry: geometry, group: group,
                            activation: activation, exactNonFinite: false, residual: residual, tactic: ConvolutionTactic(layout: .channelsLast),
                            precision: .int8, quantization: quantization)
    }
}

/// What QLinearConv, QLinearMatMul and their fused forms share: inputs x, x_scale, x_zero_point,
/// w, w_scale, w_zero_point, y_scale, y_zero_point, then the int32 bias (in units of x_scale ·
/// w_scale), all constant but x; an activation for the fused forms. Read as oneDNN's INT8
/// kernels take them; nil where they cannot (weights not int8 with zero points 0, scales not
/// finite and positive, 8-bit types that do not match).
struct QuantizedLinearParameters {
    let layer: Layer
    let constants: ConstantStore
    let bias: Tensor?
    let activation: Activation?
    let quantization: DNNLQuantization
    let outputType: DataType
    /// What one unit of the kernel's result is before the final scale: y_scale, or 1 (real
    /// units) when an activation that does not commute with scaling comes first.
    let unitScale: Double

    /// `channels`: the weights' output channels (Conv) or columns (MatMul), which w_scale and the bias may run along.
    init?(_ layer: Layer, constants: ConstantStore, input: DataType, weights w: KernelWeights, channels: Int) throws {
        self.layer = layer
        self.constants = constants
        guard [.uint8, .int8].contains(input), w.dataType == .int8 else { return nil }
        func constant(_ i: Int) -> Tensor? { layer.present(i) ? constants[layer.inputs[i]] : nil }
        // Weights symmetric: every zero point 0 (oneDNN has no weight zero points).
        if layer.present(5) {
            guard let z = constant(5), z.dataType == .int8, z.int64s.allSatisfy({ $0 == 0 }) else { return nil }
        }
        let scales = { (i: Int, count: Int) in Self.scales(constant(i), count: count) }
        let zeroPoint = { (i: Int, type: DataType) in Self.zeroPoint(layer.present(i), constant(i), type) }
        // Anvil's fused forms may leave y_scale out: the layer then writes its real result as floats.
        let floatOutput = layer.domain == anvilDomain && !layer.present(6)
        guard let outputType = floatOutput ? .float : layer.present(7) ? constant(7)?.dataType : .uint8, [.uint8, .int8, .float].contains(outputType),
              let xs = scales(1, 1), let ws = scales(4, channels), let ys = floatOutput ? [1] : scales(6, 1),
              let xz = zeroPoint(2, input), let yz = floatOutput ? 0 : zeroPoint(7, outputType) else { return nil }
        if layer.present(8) {
            // int32 in accumulator units; a float bias (real units) divided into them, not rounded.
            guard let b = constant(8), b.dataType == .int32 || (b.dataType == .float && layer.opType == "FusedQLinearMatMul"), b.count == channels else { return nil }
            let values = b.dataType == .int32 ? b.floats : b.floats.enumerated().map { i, v in Float(Double(v) / (xs[0] * ws[ws.count == 1 ? 0 : i])) }
            bias = try Tensor(floats: values, shape: [channels])
        } else {
            bias = nil
        }
        var q = DNNLQuantization(outputScales: ws.map { Float(xs[0] * $0 / ys[0]) }, sourceZeroPoint: xz, destinationZeroPoint: yz)
        q.sourceType = input == .uint8 ? dnnl_u8 : dnnl_s8
        q.destinationType = outputType == .uint8 ? dnnl_u8 : outputType == .int8 ? dnnl_s8 : dnnl_f32
        self.outputType = outputType
        // ReLU and Clip act on the requantized value before its zero point (in units of y_scale);
        // another activation acts on the real result, then a final scale by 1 / y_scale follows.
        switch try layer.domain == anvilDomain ? fusedActivation(layer.evalContext) : nil {
        case nil: activation = nil
        case .relu?: activation = .relu
        case .clip(let lo, let hi)?: activation = .clip(min: Float(Double(lo) / ys[0]), max: Float(Double(hi) / ys[0]))
        case let other?:
            // One eltwise step without a linear one, which the final scale's linear step would disturb (`DNNLAttributes.fusable`).
            guard let steps = try? DNNLAttributes.eltwise(other, exactNonFinite: false), steps.count == 1, steps[0].0 != dnnl_eltwise_linear else { return nil }
            activation = other
            if !floatOutput {
                q.outputScales = ws.map { Float(xs[0] * $0) }
                q.finalScale = Float(1 / ys[0])
            }
        }
        unitScale = q.finalScale == nil ? ys[0] : 1
        quantization = q
    }

    /// A scale: one (or `count`) finite positive float(s).
    static func scales(_ t: Tensor?, count: Int) -> [Double]? {
        guard let t, t.dataType == .float, t.count == 1 || t.count == count else { return nil }
        let v = t.doubles
        return v.allSatisfy({ $0.isFinite && $0 > 0 }) ? v : nil
    }

    /// A zero point of `type`: one value (absent: 0).
    static func zeroPoint(_ present: Bool, _ t: Tensor?, _ type: DataType) -> Int32? {
        guard present else { return 0 }
        guard let t, t.dataType == type, t.count == 1 else { return nil }
        return Int32(t.int64s[0])
    }

    func scales(_ i: Int, count: Int = 1) -> [Double]? { Self.scales(layer.present(i) ? constants[layer.inputs[i]] : nil, count: count) }
    func zeroPoint(_ i: Int, _ type: DataType) -> Int32? { Self.zeroPoint(layer.present(i), layer.present(i) ? constants[layer.inputs[i]] : nil, type) }
}

/// Quantized layers on oneDNN's INT8 kernels: convolutions with 8-bit activations and
/// weights (requantized in the kernel's output scales, residual sum and activation as
/// post-ops), and QuantizeLinear / DequantizeLinear as scaling reorders.
enum QuantizedLowering {
    static let entries = [
        LoweringEntry(kind: .quantizedConvolution, ops: ["QLinearConv", "anvil.FusedQLinearConv"], output: .plain, lower: convolution, prepare: prepare),
        LoweringEntry(kind: .quantizedMatmul, ops: ["QLinearMatMul", "anvil.FusedQLinearMatMul"], output: .plain, lower: matmul),
        LoweringEntry(kind: .quantizedLookup, ops: ["anvil.QuantizedLookup"], output: .input, lower: lookup),
        LoweringEntry(kind: .quantize, ops: ["QuantizeLinear"], output: .input, lower: quantize),
        LoweringEntry(kind: .dequantize, ops: ["DequantizeLinear"], output: .input, lower: quantize),
    ]

    /// QuantizedLookup: every stored byte (padding of a blocked layout included) through the
    /// 256-entry table, in the input's layout.
    static func lookup(_ l: LayerLowering) throws -> LayerDecision? {
        guard let x = l.storedValue(0), [.uint8, .int8].contains(x.dataType), let table = l.constant(1), table.count == 256,
              [.uint8, .int8].contains(table.dataType), let target = dnnlType(table.dataType) else { return nil }
        let entries = table.int64s.map { UInt8(truncatingIfNeeded: $0) }
        let layout = try x.layout.map { retyped($0, target) } ?? plainDescriptor(x.shape, table.dataType)
        let out = l.plan.newValue(l.layer.outputs[0], table.dataType, x.shape, layout: layout)
        let count = x.byteCount
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            let from = UInt(bitPattern: p.address(x)), to = UInt(bitPattern: p.address(out))
            Parallel.ranges(count, parts: Parallel.parts(forElements: count)) { range in
                let source = UnsafePointer<UInt8>(bitPattern: from)!, target = UnsafeMutablePointer<UInt8>(bitPattern: to)!
                entries.withUnsafeBufferPointer { t in for i in range { target[i] = t[Int(source[i])] } }
            }
        })
        var decision = l.decided(.quantizedLookup)
        decision.precision = .int8
        return decision
    }

    /// A quantized matrix product with constant int8 weights [K, N] (scales per column or one),
    /// the input's leading dimensions folded into M; row-major 8-bit input and output.
    static func matmul(_ l: LayerLowering) throws -> LayerDecision? {
        guard let x = l.storedValue(0), x.shape.count >= 2, let w = l.weights(3), w.rank == 2, x.shape.last == w.shape[0], w.shape[0] > 0,
              let p = try QuantizedLinearParameters(l.layer, constants: l.plan.constants, input: x.dataType, weights: w, channels: w.shape[1]) else { return nil }
        let k = w.shape[0], n = w.shape[1], m = x.count / k
        let (_, shape) = try l.outputType()
        guard m > 0, shape == Array(x.shape.dropLast()) + [n] else { return nil }
        // A float residual into a float result (the sum post-op).
        let residual = l.layer.domain == anvilDomain && l.present(9) ? l.value(9) : nil
        if l.layer.domain == anvilDomain && l.present(9) && (residual?.dataType != .float || p.outputType != .float) { return nil }
        let engine = l.plan.engine
        let mm = try l.plan.shared.kernel("qmatmul|\(l.layer.name)|\(m)", layer: l.layer.name) {
            try DNNLMatMul(engine: engine, m: m, weights: w, bias: p.bias, activation: p.activation, exactNonFinite: false, residual: residual != nil,
                           precision: .int8, quantization: p.quantization)
        }
        let src = try l.plan.plain(x)
        let (out, copies) = try residual.map { try l.residualDestination(l.plan.plain($0), layout: plainDescriptor(shape), notSharing: src) }
            ?? (l.plan.newValue(l.layer.outputs[0], p.outputType, shape), [])
        for step in try mm.kernel.planSteps(layer: l.layer.name, source: src, destination: out, copies: copies) { try l.emit(.quantizedMatmul, step) }
        return LayerDecision(kernel: .quantizedMatmul, precision: .int8, postOps: PostOps(bias: p.bias != nil, residual: residual != nil, activation: p.activation))
    }

    static func spec(_ l: LayerLowering, input: PlanValue) throws -> QuantizedConvolutionSpec? {
        let residual = l.present(9) ? l.storedValue(9)?.dataType : nil
        return try QuantizedConvolutionSpec(l.layer, constants: l.plan.constants, input: input.dataType, inputShape: input.shape, residualType: residual)
    }

    static func prepare(_ l: LayerLowering, inputShape: [Int]) -> (() throws -> Void)? {
        guard l.present(0), let (type, _) = try? l.plan.type(of: l.layer.inputs[0]),
              let spec = try? QuantizedConvolutionSpec(l.layer, constants: l.plan.constants, input: type, inputShape: inputShape,
                                                       residualType: l.present(9) ? (try? l.plan.type(of: l.layer.inputs[9]))?.0 : nil) else { return nil }
        let engine = l.plan.engine, shared = l.plan.shared
        return { _ = try shared.kernel(spec.sharingKey, layer: spec.layer) { try spec.make(engine: engine) } }
    }

    static func convolution(_ l: LayerLowering) throws -> LayerDecision? {
        guard let x = l.storedValue(0), let spec = try spec(l, input: x) else { return nil }
        let residualValue = spec.residual ? l.storedValue(9) : nil
        if spec.residual && residualValue == nil { return nil }
        let engine = l.plan.engine
        let conv = try l.plan.shared.kernel(spec.sharingKey, layer: spec.layer) { try spec.make(engine: engine) }
        if conv.kernel.primitive.isReference { throw SlowImplementation(kind: .quantizedConvolution, implementation: conv.implementation) }
        let src = try l.plan.inLayout(x, conv.inputDescriptor.descriptor)
        let dstLayout = conv.outputDescriptor.descriptor
        let out: PlanValue
        var copies: [(from: PlanValue, to: PlanValue)] = []
        // The sum post-op reads the residual from the destination, in its own type (s8 bytes in a
        // u8 destination): its storage becomes the output's when nothing reads it later.
        let residual = try residualValue.map { try l.plan.inLayout($0, retyped(dstLayout, dnnlType($0.dataType) ?? dstLayout.data_type)) }
        if let residual, l.plan.dies(residual), residual.buffer != src.buffer, residual.constant == nil {
            out = l.plan.alias(l.layer.outputs[0], of: residual, type: spec.outputType, shape: conv.outputShape, layout: dstLayout)
        } else {
            out = l.plan.newValue(l.layer.outputs[0], spec.outputType, conv.outputShape, layout: dstLayout)
            if let residual { copies = [(residual, out)] }
        }
        for step in try conv.kernel.planSteps(layer: l.layer.name, source: src, destination: out, copies: copies) { try l.emit(.quantizedConvolution, step) }
        return LayerDecision(kernel: .quantizedConvolution, layout: .channelsLast, precision: .int8,
                             postOps: PostOps(bias: spec.bias != nil, residual: spec.residual, activation: spec.activation))
    }

    /// QuantizeLinear (float → u8/s8) and DequantizeLinear (u8/s8 → float) with one scale and
    /// zero point or one per channel (axis 1: NNCF quantizes the inputs of depthwise
    /// convolutions so). Quantizing divides by the scale in float, as the
    /// specification and ONNX Runtime do (multiplying by 1/scale rounds inputs that lie on a
    /// grid, as images do, differently at ties): a C loop. Dequantizing is exact in float
    /// either way: a oneDNN reorder scaling by the scale (per channel: by each channel's) with
    /// the zero point (one for all channels).
    static func quantize(_ l: LayerLowering) throws -> LayerDecision? {
        let dequantize = l.op == "DequantizeLinear"
        guard let x = dequantize ? l.storedValue(0) : l.value(0), let scale = l.constant(1), scale.dataType == .float,
              scale.floats.allSatisfy({ $0.isFinite && $0 > 0 }) else { return nil }
        let zero = l.present(2) ? l.constant(2) : nil
        if l.present(2) && (zero == nil || zero!.count != scale.count) { return nil }
        let (outType, shape) = try l.outputType()
        let quantizedType = dequantize ? x.dataType : outType
        guard [.uint8, .int8].contains(quantizedType), (dequantize ? outType : x.dataType) == .float, zero.map({ $0.dataType == quantizedType }) ?? true,
              shape == x.shape, (try l.attributes.int("block_size", 0)) == 0, (try l.attributes.int("saturate", 1)) == 1,
              let target = dnnlType(outType) else { return nil }
        // One scale, or one per channel along axis 1 of a [N, C, …] tensor.
        let perChannel = scale.count > 1
        if perChannel {
            guard (2...5).contains(shape.count), ShapeMath.normalizeAxis(try l.attributes.int("axis", 1), rank: shape.count) == 1, scale.count == shape[1] else { return nil }
        }
        let scales = scale.floats, zeros = zero.map { $0.int64s.map(Float.init) } ?? Array(repeating: 0, count: scales.count)
        if dequantize {
            // oneDNN's reorder takes per-channel scales but one zero point.
            guard Set(zeros).count == 1 else { return nil }
            let source = try x.descriptor()
            let layout = try x.layout.map { retyped($0, target) } ?? plainDescriptor(shape, outType)
            let out = l.plan.newValue(l.layer.outputs[0], outType, shape, layout: layout)
            let primitive = try reorderPrimitive(from: source, to: layout, engine: l.plan.engine,
                                                 quantization: DNNLQuantization(outputScales: scales, sourceZeroPoint: Int32(zeros[0])))
            try l.emit(.dequantize, PrimitiveStep(layer: l.layer.name, primitive: primitive, arguments: [(DNNL_ARG_FROM, x, source), (DNNL_ARG_TO, out, layout)],
                                                implementation: "reorder"))
            return l.decided(.dequantize)
        }
        let signed = outType == .int8
        // Into channels-last, the layout the INT8 kernels read: a plain [N, C, spatial…] input, a
        // channels-last one, and any input quantized per channel (another layout made plain first).
        // One scale on another layout keeps it (every stored element, blocked padding included).
        let channelsLast = Layout.of(x.layout, shape: shape) == .channelsLast
        if perChannel || ((x.isPlain || channelsLast) && (3...5).contains(shape.count)) {
            let source = x.isPlain || channelsLast ? x : try l.plan.plain(x)
            let (n, channels, spatial) = (shape[0], shape[1], shape[2...].reduce(1, *))
            let allScales = perChannel ? scales : Array(repeating: scales[0], count: channels)
            let allZeros = perChannel ? zeros : Array(repeating: zeros[0], count: channels)
            let layout = shape.count == 2 ? try plainDescriptor(shape, outType) : try memoryDescriptor(shape, Layout.channelsLast.formatTag(rank: shape.count)!, target)
            let out = l.plan.newValue(l.layer.outputs[0], outType, shape, layout: layout)
            l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [source], writes: [out]) { p in
                let from = UInt(bitPattern: p.address(source)), to = UInt(bitPattern: p.address(out))
                allScales.withUnsafeBufferPointer { s in
                    allZeros.withUnsafeBufferPointer { z in
                        let (sp, zp) = (UInt(bitPattern: s.baseAddress), UInt(bitPattern: z.baseAddress))
                        Parallel.ranges(spatial, parts: Parallel.parts(forElements: source.count)) { range in
                            anvil_quantize_linear_per_channel(UnsafePointer<Float>(bitPattern: from)!, Int64(n), Int64(channels), Int64(spatial),
                                                              Int64(range.lowerBound), Int64(range.upperBound), UnsafePointer<Float>(bitPattern: sp)!,
                                                              UnsafePointer<Float>(bitPattern: zp)!, channelsLast ? 1 : 0, signed ? 1 : 0,
                                                              UnsafeMutableRawPointer(bitPattern: to)!)
                        }
                    }
                }
            })
        } else {
            let layout = try x.layout.map { retyped($0, target) } ?? plainDescriptor(shape, outType)
            let out = l.plan.newValue(l.layer.outputs[0], outType, shape, layout: layout)
            let count = x.byteCount / 4, (s, z) = (scales[0], zeros[0])
            l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
                let from = UInt(bitPattern: p.address(x)), to = UInt(bitPattern: p.address(out))
                Parallel.ranges(count, parts: Parallel.parts(forElements: count)) { range in
                    anvil_quantize_linear(UnsafePointer<Float>(bitPattern: from)! + range.lowerBound, Int64(range.count), s, z, signed ? 1 : 0,
                                          UnsafeMutableRawPointer(bitPattern: to)! + range.lowerBound)
                }
            })
        }
        // Quantizing writes 8-bit values (an INT8 layer).
        var decision = l.decided(.quantize)
        decision.precision = .int8
        return decision
    }
}
