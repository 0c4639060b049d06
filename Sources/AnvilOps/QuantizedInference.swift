import AnvilCore
import AnvilIR
import AnvilKernels

/// Shape inference of ONNX Runtime's quantized contrib ops (com.microsoft, `OpsMicrosoftQuantized`):
/// the float op's rule on the quantized inputs, the result in the type of the output's zero
/// point (or of the first input; QGemm without y_scale: float).
func registerMicrosoftQuantizedInference(_ b: inout RegistryBuilder) {
    // (op, the standard op whose rule gives the shape, the inputs that rule reads, the output zero point's input)
    let table: [(String, String, [Int], Int?)] = [
        ("QLinearAdd", "Add", [0, 3], 7), ("QLinearMul", "Mul", [0, 3], 7), ("QLinearAveragePool", "AveragePool", [0], 4),
        ("QLinearSigmoid", "Sigmoid", [0], 4), ("QLinearLeakyRelu", "LeakyRelu", [0], 4), ("QGemm", "Gemm", [0, 3], 8),
    ]
    for (op, standardOp, inputs, zero) in table {
        let rule = b.rule(standardOp)
        b.infer([op], domain: microsoftDomain) { ctx in
            guard let rule else { return [.unknown] }
            var inner = InferContext(node: ctx.node, opset: 13, inputs: inputs.map { $0 < ctx.inputs.count ? ctx.inputs[$0] : .unknown }, freshSymbol: ctx.freshSymbol)
            inner.unify = ctx.unify
            var result = try rule(inner)
            let floatOutput = op == "QGemm" && (ctx.node.inputs.count < 8 || ctx.node.inputs[7].isEmpty)
            let element = floatOutput ? .float : zero.flatMap { ctx.type($0).elementType } ?? ctx.type(0).elementType
            result[0] = facts(element, result[0].type.dims)
            return result
        }
    }
    b.infer(["QLinearGlobalAveragePool"], domain: microsoftDomain) { ctx in
        let element = ctx.type(4).elementType ?? ctx.type(0).elementType
        guard let x = ctx.dims(0), x.count >= 3 else { return [facts(element, nil)] }
        let channelsLast = try ctx.attributes.int("channels_last", 0) != 0
        let ones = Array(repeating: Dim.known(1), count: x.count - 2)
        return [facts(element, channelsLast ? [x[0]] + ones + [x[x.count - 1]] : [x[0], x[1]] + ones)]
    }
    let concat = b.rule("Concat")
    b.infer(["QLinearConcat"], domain: microsoftDomain) { ctx in
        guard let concat else { return [.unknown] }
        let parts = Array(stride(from: 2, to: ctx.inputs.count, by: 3)).map { ctx.inputs[$0] }
        var inner = InferContext(node: ctx.node, opset: 13, inputs: parts, freshSymbol: ctx.freshSymbol)
        inner.unify = ctx.unify
        var result = try concat(inner)
        result[0] = facts(ctx.type(1).elementType ?? ctx.type(2).elementType, result[0].type.dims)
        return result
    }
}
