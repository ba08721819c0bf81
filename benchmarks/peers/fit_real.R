# Fit a mixture of experts to a prepared real table with flexmix; used by
# bench_real.py. Usage:
#   Rscript fit_real.R TRAIN.csv TEST.csv K NREP SEED OUT.csv [MINPRIOR]
# Model: k Gaussian regressions y ~ x (with intercepts), one sigma per component,
# gate FLXPmultinom(~ x) (multinomial logit with intercepts); best of NREP runs
# of EM from random partitions (stepFlexmix). Components whose prior falls below
# MINPRIOR are dropped (default 0: none is dropped silently). Writes train and
# held-out mean log-likelihood per row, iterations, converged, seconds (the fit
# alone), the number of components and the smallest one's posterior weight in
# rows.
args <- commandArgs(trailingOnly = TRUE)
train <- read.csv(args[1]); test <- read.csv(args[2])
k <- as.integer(args[3]); nrep <- as.integer(args[4]); set.seed(as.integer(args[5]))
minprior <- if (length(args) >= 7) as.numeric(args[7]) else 0
suppressMessages(library(flexmix))
features <- setdiff(names(train), "y")
rhs <- paste(features, collapse = " + ")
status <- "ok"
start <- proc.time()[["elapsed"]]
fit <- tryCatch(
  stepFlexmix(as.formula(paste("y ~", rhs)), data = train, k = k, nrep = nrep,
              model = FLXMRglm(), concomitant = FLXPmultinom(as.formula(paste("~", rhs))),
              control = list(iter.max = 1000, minprior = minprior), verbose = FALSE),
  error = function(e) { status <<- gsub("[\r\n,]+", " ", conditionMessage(e)); NULL })
seconds <- proc.time()[["elapsed"]] - start
mean_loglik <- function(fit, df) {
  if (nrow(df) == 0) return(NA)  # no held-out rows (CO2data)
  pars <- parameters(fit)
  kk <- ncol(pars)
  X <- cbind(1, as.matrix(df[, features]))
  means <- X %*% pars[paste0("coef.", c("(Intercept)", features)), , drop = FALSE]
  sigma <- pars["sigma", ]
  logits <- X %*% fit@concomitant@coef
  logits <- logits - apply(logits, 1, max)
  gates <- exp(logits) / rowSums(exp(logits))
  dens <- sapply(seq_len(kk), function(j) gates[, j] * dnorm(df$y, means[, j], sigma[j]))
  mean(log(rowSums(matrix(dens, nrow = nrow(df)))))
}
if (is.null(fit)) {
  out <- data.frame(train = NA, test = NA, iterations = NA, converged = NA,
                    seconds = seconds, components = NA, smallest = NA, status = status)
} else {
  out <- data.frame(train = mean_loglik(fit, train), test = mean_loglik(fit, test),
                    iterations = fit@iter, converged = fit@converged,
                    seconds = seconds, components = fit@k,
                    smallest = min(colSums(posterior(fit))), status = status)
}
write.csv(out, args[6], row.names = FALSE)
