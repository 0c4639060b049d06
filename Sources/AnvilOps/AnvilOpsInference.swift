import AnvilCore
import AnvilIR
import AnvilKernels

/// Shape inference of Anvil's own ops: that of the standard op they extend.
func registerAnvilInference(_ b: inout RegistryBuilder) {
    let sameSemantics = anvilStandardOps.keys.map { ($0, $0) }
    for (op, standardOp) in [("FusedConv", "Conv"), ("FusedGemm", "Gemm"), ("FusedMatMul", "MatMul"), ("SiLU", "Relu"), ("FusedQLinearConv", "QLinearConv"), ("FusedQLinearMatMul", "QLinearMatMul")] + sameSemantics {
        let rule = b.rule(standardOp)
        b.infer([op], domain: anvilDomain) { ctx in
            guard let rule else { return [.unknown] }
            let opset = anvilStandardOps[op] ?? 17
            var inner = InferContext(node: ctx.node, opset: opset, inputs: Array(ctx.inputs.prefix(op == "FusedMatMul" ? 2 : op == "FusedQLinearConv" ? 9 : op == "FusedQLinearMatMul" ? 8 : ctx.inputs.count)), freshSymbol: ctx.freshSymbol)
            inner.unify = ctx.unify
            return try rule(inner)
        }
    }
    b.infer(["QuantizedLookup"], domain: anvilDomain) { ctx in [facts(ctx.type(1).elementType, ctx.dims(0))] }
}
