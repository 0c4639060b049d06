import AnvilCore
import AnvilIR
import AnvilKernels

/// Shape inference of the detection ops: NonMaxSuppression's data-dependent count.
func registerDetectionInference(_ b: inout RegistryBuilder) {
    b.infer(["NonMaxSuppression"]) { ctx in [facts(.int64, [ctx.freshSymbol(), .known(3)])] }
}
