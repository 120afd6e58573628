import Foundation
import Tensors

extension Scheduler {
    /// The scheduler's prediction of the clean sample x0 from `modelOutput` at
    /// `sample` and `timestep`, computed without advancing the scheduler, and
    /// differentiable in `sample` and `modelOutput`: what loss guidance
    /// differentiates.
    ///
    /// - DDIM and DDPM: their `step`'s `pred_original_sample` (clipping and
    ///   thresholding included; both steps are stateless, the call draws no noise).
    /// - PNDM, DPM-Solver++, UniPC: (x − √(1−ᾱₜ)·ε)/√ᾱₜ (or the v / x0 form of
    ///   the prediction type), the x0 their multistep updates are built on
    ///   (before DPM-Solver's optional thresholding).
    /// - Euler, Euler ancestral, LMS: x − σ·ε (or the v / x0 form) with this
    ///   timestep's σ (Euler's `s_churn` is ignored).
    /// - Heun: throws, because its x0 depends on which of its two stages runs.
    public func predictedOriginalForGuidance(_ modelOutput: Tensor, timestep: Float, sample: Tensor) throws -> Tensor {
        switch self {
        case let ddim as DDIMScheduler:
            var unused = RandomGenerator(seed: 0)
            return ddim.step(modelOutput, timestep: timestep, sample: sample, noise: Tensor.zeros(sample.shape), generator: &unused).predOriginalSample
        case let ddpm as DDPMScheduler:
            var unused = RandomGenerator(seed: 0)
            return ddpm.step(modelOutput, timestep: timestep, sample: sample, noise: Tensor.zeros(sample.shape), generator: &unused).predOriginalSample
        case let pndm as PNDMScheduler:
            return try alphaPredictedOriginal(modelOutput, timestep: timestep, sample: sample, type: pndm.predictionType)
        case let solver as DPMSolverMultistepScheduler:
            return try alphaPredictedOriginal(modelOutput, timestep: timestep, sample: sample, type: solver.predictionType)
        case let solver as UniPCMultistepScheduler:
            return try alphaPredictedOriginal(modelOutput, timestep: timestep, sample: sample, type: solver.predictionType)
        case let euler as EulerDiscreteScheduler:
            return try sigmaPredictedOriginal(modelOutput, timestep: timestep, sample: sample, type: euler.predictionType, sigmas: euler.sigmas)
        case let euler as EulerAncestralDiscreteScheduler:
            return try sigmaPredictedOriginal(modelOutput, timestep: timestep, sample: sample, type: euler.predictionType, sigmas: euler.sigmas)
        case let lms as LMSDiscreteScheduler:
            return try sigmaPredictedOriginal(modelOutput, timestep: timestep, sample: sample, type: lms.predictionType, sigmas: lms.sigmas)
        default:
            throw GuidanceError("\(Self.className) has no x0 that guidance can differentiate before a step (Heun's x0 depends on which of its "
                                + "two stages runs); use one of ddim, ddpm, pndm, lms, euler, euler-ancestral, dpm, unipc")
        }
    }

    private func trainingIndex(_ timestep: Float) throws -> Int {
        let index = Int(timestep)
        guard Float(index) == timestep, index >= 0, index < trainTimesteps else {
            throw GuidanceError("timestep \(timestep) is not a training timestep of \(Self.className)")
        }
        return index
    }

    private func alphaPredictedOriginal(_ modelOutput: Tensor, timestep: Float, sample: Tensor, type: PredictionType) throws -> Tensor {
        let alphaProduct = noiseSchedule.alphasCumprod[try trainingIndex(timestep)]
        return StepMath.predictedOriginal(modelOutput, sample: sample, type: type,
                                          alpha: alphaProduct.squareRoot(), sigma: (1 - alphaProduct).squareRoot())
    }

    private func sigmaPredictedOriginal(_ modelOutput: Tensor, timestep: Float, sample: Tensor, type: PredictionType, sigmas: [Float]) throws -> Tensor {
        guard let index = timesteps.firstIndex(of: timestep), index < sigmas.count else {
            throw GuidanceError("timestep \(timestep) is not one of \(Self.className)'s timesteps; call setTimesteps first")
        }
        let sigma = sigmas[index]
        switch type {
        case .epsilon: return sample - modelOutput * sigma
        case .vPrediction: return modelOutput * (-sigma / (sigma * sigma + 1).squareRoot()) + StepMath.divide(sample, sigma * sigma + 1)
        case .sample: return modelOutput
        }
    }
}
