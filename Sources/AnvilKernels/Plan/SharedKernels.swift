import AnvilCore
import Foundation

/// Kernels shared by every execution context of an engine: a oneDNN convolution or
/// matmul holds its prepacked weights, so contexts share one per layer and shape.
public final class SharedKernels: @unchecked Sendable {
    private let lock = NSLock()
    private var kernels: [String: AnyObject] = [:]

    public init() {}

    /// The kernel for `key`, made on first request. Making runs outside the lock so
    /// several kernels can be made at once; if two threads race, the first kept wins.
    func kernel<K: AnyObject>(_ key: String, make: () throws -> K) throws -> K {
        lock.lock()
        if let k = kernels[key] as? K { lock.unlock(); return k }
        lock.unlock()
        let made = try make()
        lock.lock()
        defer { lock.unlock() }
        if let k = kernels[key] as? K { return k }
        kernels[key] = made
        return made
    }

    /// Number of kernels held (for reports).
    public var count: Int { lock.lock(); defer { lock.unlock() }; return kernels.count }

    /// The kernels holding constant weights.
    private var weighted: [DNNLWeightedPrimitive] {
        lock.lock()
        defer { lock.unlock() }
        return kernels.values.compactMap { k in
            switch k {
            case let c as DNNLConvolution: c.kernel
            case let m as DNNLMatMul: m.kernel
            case let d as DNNLDeconvolution: d.kernel
            default: nil
            }
        }
    }

    /// The prepacked weights of the kernels made so far that an engine file can
    /// store, one per constant and layout, in a stable order.
    public var storableWeights: [PackedWeights] {
        var seen: [String: PackedWeights] = [:]
        for k in weighted { if let p = k.storable { seen["\(p.constant)|\(p.user.values)|\(p.packed.values)"] = p } }
        return seen.values.sorted { ($0.constant, $0.user, $0.packed) < ($1.constant, $1.user, $1.packed) }
    }

    /// Kernels with constant weights, and how many of them use prepacked weights from
    /// the engine file in place (the others packed theirs when they were made).
    public var weightsInPlace: (inPlace: Int, kernels: Int) {
        let all = weighted
        return (all.filter { !$0.ownsWeights }.count, all.count)
    }
}
