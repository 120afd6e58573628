import Foundation
import NN
import Tensors

// Data-parallel CLIP training: every rank's contrastive loss uses the whole global batch's
// pairs as negatives, so N ranks of `batchSize` pairs compute what one process computes with
// N × `batchSize` (open_clip's `gather_with_grad` with `local_loss`).
//
// Rank r of N, with B pairs each:
// 1. computes its own features (image and text, [B, d]) with their graph;
// 2. gathers every rank's features ([N·B, d], rank order): `group.allGather`;
// 3. computes the logits of the global batch from the gathered features (leaves) and its share
//    of the loss: the image→text cross-entropy of its B images (rows r·B ..< (r+1)·B) and the
//    text→image cross-entropy of its B captions (those columns), each the mean over its B rows.
//    The sum of the N shares is N × the one-process loss; their mean, the logged loss, is it;
// 4. backward of its share into the gathered features (and the temperature);
// 5. the gradients of the gathered features summed over ranks (`group.sum`): the gradient
//    of N × the one-process loss with respect to every feature. This is the backward rule of
//    an all-gather ("sum the gathered tensor's gradient, keep this rank's slice");
// 6. backward of its slice (rows r·B ..< (r+1)·B) through its own towers.
// Every parameter's gradient on rank r is then N × rank r's part of the one-process gradient,
// and the temperature's N × its share; `averageGradients` divides the sum over ranks by N, which
// gives the one-process gradient for both — the temperature counted once, not N times.
//
// With an overlapping group (`DIFFUSE_MPI_BACKWARD_OVERLAP`) the average starts after step 5 (no other
// collective call may come between its start and its wait): the temperature's gradient is final after
// step 4 (the towers do not use it), and each tower's after its own backward pass in step 6 (the towers
// share no parameter), so their buckets start during those passes and the sums are the same.
extension CLIPTrainer {
    /// Forward and backward of this rank's pairs of a data-parallel step (see above): the
    /// parameters' `grad` hold N × this rank's part of the global batch's gradient, to be
    /// averaged by the trainer's ``StepGradientAverage`` (started here, before the towers' backward
    /// passes, when the group overlaps). Returns this rank's share of the
    /// loss (the ranks' mean is the global batch's loss) and the accuracy of its images.
    func distributedBackward(images: Tensor, captions: [String]) throws -> (loss: Float, accuracy: Float) {
        let tokens = tokenizer.encode(captions)
        let textFeatures = model.textFeatures(ids: tokens.ids, batch: tokens.count, attentionMask: tokens.attentionMask)
        let imageFeatures = model.imageFeatures(images)
        let shard = group.shard(localCount: captions.count)
        let gathered = try group.allGather([imageFeatures.detach(), textFeatures.detach()])
        let (allImageFeatures, allTextFeatures) = (gathered[0], gathered[1])
        allImageFeatures.requiresGrad = true
        allTextFeatures.requiresGrad = true
        let (loss, imageRows) = model.contrastiveLoss(imageFeatures: allImageFeatures, textFeatures: allTextFeatures, shard: shard)
        let value = loss.item
        let predicted = noGrad { imageRows.detach().argmax(axis: 1).toArray() }
        let correct = zip(predicted, shard.rows).filter { Int($0) == $1 }.count
        loss.backward()
        let summed = try group.sum([allImageFeatures.grad ?? Tensor.zeros(allImageFeatures.shape),
                                    allTextFeatures.grad ?? Tensor.zeros(allTextFeatures.shape)])
        try gradientAverage.start()
        gradientAverage.gradientsAreFinal([model.logitScale])
        gradientAverage.backward(imageFeatures, gradient: shard.slice(summed[0]))
        gradientAverage.backward(textFeatures, gradient: shard.slice(summed[1]))
        return (value, Float(correct) / Float(Swift.max(1, captions.count)))
    }
}

extension CLIPModel {
    /// One rank's share of CLIP's contrastive loss over a global batch whose features every rank
    /// holds: the image→text cross-entropy of `shard`'s images (its rows of the global batch's
    /// `logits_per_image`) plus the text→image cross-entropy of its captions (its columns), each the
    /// mean over the shard's rows, halved. With one rank it is ``contrastiveLoss(logitsPerImage:)``
    /// of the whole batch; with N the N shares sum to N × that. Also returns the shard's rows of
    /// `logits_per_image` (for its accuracy).
    public func contrastiveLoss(imageFeatures: Tensor, textFeatures: Tensor, shard: DataParallelShard) -> (loss: Tensor, logitsPerImage: Tensor) {
        precondition(imageFeatures.shape.first == shard.globalCount && textFeatures.shape.first == shard.globalCount,
                     "contrastiveLoss: features of shapes \(imageFeatures.shape) and \(textFeatures.shape) for a global batch of \(shard.globalCount)")
        let logits = logitsPerImage(imageFeatures: imageFeatures, textFeatures: textFeatures)
        let targets = Array(shard.rows)
        let imageRows = logits.narrowed(axis: 0, start: shard.rows.lowerBound, length: shard.localCount)
        let textRows = logits.narrowed(axis: 1, start: shard.rows.lowerBound, length: shard.localCount).transposed(0, 1)
        let imageLoss = Tensor.crossEntropy(logits: imageRows, targets: targets)
        let textLoss = Tensor.crossEntropy(logits: textRows, targets: targets)
        return ((imageLoss + textLoss) * 0.5, imageRows)
    }
}
