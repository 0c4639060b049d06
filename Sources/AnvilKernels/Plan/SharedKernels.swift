import AnvilCore
import Foundation

/// Kernels shared by every execution context of an engine: a oneDNN convolution or
/// matmul holds its prepacked weights, so contexts share one per layer and shape.
///
/// A dynamic engine meets a new shape per input size, and each kernel holds JIT code and
/// may hold its own packed weights, so at most `variantsPerLayer` kernels of one layer
/// (its shapes and tactics) are kept (as many as a context keeps plans), the
/// least recently used dropped first: a server fed every sequence length would otherwise
/// keep them all. A plan still holding a dropped kernel keeps it alive until the plan goes.
public final class SharedKernels: @unchecked Sendable {
    private let lock = NSLock()
    private var kernels: [String: AnyObject] = [:]
    /// Per layer: its kernels' keys, least recently used first.
    private var variants: [String: [String]] = [:]
    public let variantsPerLayer: Int

    public init(variantsPerLayer: Int = 8) { self.variantsPerLayer = max(1, variantsPerLayer) }

    /// The kernel for `key`, made on first request. Making runs outside the lock so
    /// several kernels can be made at once; if two threads race, the first kept wins.
    func kernel<K: AnyObject>(_ key: String, layer: String, make: () throws -> K) throws -> K {
        lock.lock()
        if let k = kernels[key] as? K { touch(key, layer); lock.unlock(); return k }
        lock.unlock()
        let made = try make()
        lock.lock()
        defer { lock.unlock() }
        if let k = kernels[key] as? K { touch(key, layer); return k }
        kernels[key] = made
        touch(key, layer)
        return made
    }

    /// Marks `key` most recently used and drops its layer's oldest kernels beyond the bound (lock held).
    private func touch(_ key: String, _ layer: String) {
        var keys = variants[layer] ?? []
        if let i = keys.firstIndex(of: key) { keys.remove(at: i) }
        keys.append(key)
        while keys.count > variantsPerLayer { kernels[keys.removeFirst()] = nil }
        variants[layer] = keys
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
