# Fit one data set with an established R package; used by run_peers.py.
# Usage: Rscript fit_peer.R METHOD DATA.csv OUT.csv SEED
#   METHOD: flexmix (experts y ~ x - 1, gate FLXPmultinom(~ x - 1), EM from a
#           random partition) or hmeEM (mixtools; its gate has an intercept and,
#           as coded in mixtools 2.0.0, uses only the first covariate), or
#           regmixEM (mixtools' mixture of linear regressions: no gate, constant
#           weights; its regressors are comparable, its gate is not).
# Writes OUT.csv with rows expert1, expert2, gate1, gate2, and columns x1..xd,
# sigma, seconds (the fit alone, not R's start-up or reading the file), status
# ("ok" or the package's error message, with the parameters then NA).
args <- commandArgs(trailingOnly = TRUE)
method <- args[1]; data_path <- args[2]; out_path <- args[3]
set.seed(as.integer(args[4]))
df <- read.csv(data_path)
features <- setdiff(names(df), "y")
d <- length(features)
x <- as.matrix(df[, features])
rhs <- paste("~", paste(features, collapse = " + "), "- 1")
experts <- matrix(NA_real_, 2, d); gate <- matrix(0, 2, d); sigma <- NA_real_
status <- "ok"
start <- proc.time()[["elapsed"]]
fit_error <- function(e) { status <<- gsub("[\r\n,]+", " ", conditionMessage(e)) }
if (method == "flexmix") tryCatch({
  suppressMessages(library(flexmix))
  fit <- flexmix(as.formula(paste("y", rhs)), data = df, k = 2,
                 model = FLXMRglm(), concomitant = FLXPmultinom(as.formula(rhs)),
                 control = list(iter.max = 500, minprior = 0))
  pars <- parameters(fit)
  if (ncol(pars) == 2) {
    experts <- t(pars[paste0("coef.", features), ])
    sigma <- mean(pars["sigma", ])
    coefs <- fit@concomitant@coef  # d x 2, first column the reference (zero)
    gate <- t(coefs)
  } else {
    status <- "flexmix dropped a component"
  }
}, error = fit_error) else if (method == "hmeEM") tryCatch({
  suppressMessages(library(mixtools))
  fit <- hmeEM(df$y, x, k = 2, addintercept = TRUE, maxit = 500)
  experts <- t(fit$beta[-1, ])  # drop the intercepts
  sigma <- mean(fit$sigma)
  gate[1, 1] <- fit$w[2]  # its single gating covariate is the first feature
}, error = fit_error) else if (method == "regmixEM") tryCatch({
  suppressMessages(library(mixtools))
  fit <- regmixEM(df$y, x, k = 2, addintercept = FALSE, maxit = 500)
  experts <- t(fit$beta)
  sigma <- mean(fit$sigma)
  gate[] <- NA_real_  # constant mixing weights: no gate to compare
}, error = fit_error) else {
  stop(paste("unknown method", method))
}
seconds <- proc.time()[["elapsed"]] - start
out <- rbind(experts, gate)
colnames(out) <- features
out <- data.frame(out, sigma = sigma, seconds = seconds, status = status)
write.csv(out, out_path, row.names = FALSE)
