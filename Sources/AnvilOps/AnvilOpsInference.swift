import AnvilCore
import AnvilIR
import AnvilKernels

/// Shape inference of Anvil's own ops: that of the standard op they extend.
func registerAnvilInference(_ b: inout RegistryBuilder) {
    for (op, standardOp) in [("FusedConv", "Conv"), ("FusedGemm", "Gemm"), ("FusedMatMul", "MatMul"), ("SiLU", "Relu"),
                             ("Gelu", "Gelu"), ("LayerNormalization", "LayerNormalization"), ("RMSNormalization", "RMSNormalization"),
                             ("Attention", "Attention")] {
        let rule = b.rule(standardOp)
        b.infer([op], domain: anvilDomain) { ctx in
            guard let rule else { return [.unknown] }
            let opset = ["LayerNormalization": 17, "RMSNormalization": 23, "Attention": 23, "Gelu": 20][op] ?? 17
            return try rule(InferContext(node: ctx.node, opset: opset, inputs: Array(ctx.inputs.prefix(op == "FusedMatMul" ? 2 : ctx.inputs.count)), freshSymbol: ctx.freshSymbol))
        }
    }
}
